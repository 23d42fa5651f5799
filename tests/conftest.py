# SCRATCH - delete before handing back
import os, pytest
@pytest.fixture(scope="session")
def rabbitmq_url():
    return "amqp://guest:guest@127.0.0.1:5672/%2F"
@pytest.fixture(scope="session")
def cavalcade_url():
    if os.environ.get("CAV_AS_RABBIT"):
        return "amqp://guest:guest@127.0.0.1:5672/%2F"
    pytest.skip("cavalcade not running")
