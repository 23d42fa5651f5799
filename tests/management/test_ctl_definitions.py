"""``cavalcade ctl export_definitions FILE`` / ``import_definitions FILE``: no node needed,
RabbitMQ's format, the same use-cases as ``/api/definitions``."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.integration.test_ctl import ctl, ok


def test_export_then_import_into_another_database(
    database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    ok(database_url, "add_user", "alice", "pw")
    ok(database_url, "set_user_tags", "alice", "monitoring")
    ok(database_url, "add_vhost", "shop")
    ok(database_url, "set_permissions", "-p", "shop", "alice", ".*", ".*", ".*")
    file = tmp_path / "definitions.json"
    ok(database_url, "export_definitions", str(file))
    doc = json.loads(file.read_text())
    assert {u["name"] for u in doc["users"]} == {"guest", "alice"}
    assert {"name": "shop"} in doc["vhosts"]
    doc["queues"].append(
        {
            "name": "orders",
            "vhost": "shop",
            "durable": True,
            "auto_delete": False,
            "arguments": {"x-max-length": 5},
        }
    )
    doc["exchanges"].append(
        {
            "name": "shop.events",
            "vhost": "shop",
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
    )
    doc["bindings"].append(
        {
            "source": "shop.events",
            "vhost": "shop",
            "destination": "orders",
            "destination_type": "queue",
            "routing_key": "order.#",
            "arguments": {},
        }
    )
    file.write_text(json.dumps(doc))
    from cavalcade.storage import schema
    from tests.conftest import run_sync

    run_sync(lambda: schema.upgrade(empty_database_url, "head"))
    ok(empty_database_url, "import_definitions", str(file))
    again = tmp_path / "again.json"
    ok(empty_database_url, "export_definitions", str(again))
    back = json.loads(again.read_text())
    for key in ("users", "permissions", "queues", "exchanges", "bindings"):
        assert sorted(map(json.dumps, back[key])) == sorted(map(json.dumps, doc[key])), key
    assert "alice" in ok(empty_database_url, "list_users")
    assert ctl(empty_database_url, "authenticate_user", "alice", "pw").returncode == 0


def test_a_rabbitmq_export_imports(database_url: str, tmp_path: Path) -> None:
    try:
        doc = requests.get(
            "http://127.0.0.1:15672/api/definitions", auth=("guest", "guest"), timeout=5
        ).json()
    except requests.RequestException:
        import pytest

        pytest.skip("no RabbitMQ management API")
    for key in ("queues", "exchanges", "bindings"):  # names PostgreSQL cannot store
        doc[key] = [
            e
            for e in doc[key]
            if not any("\x00" in str(e.get(f, "")) for f in ("name", "source", "destination"))
        ]
    file = tmp_path / "rabbit.json"
    file.write_text(json.dumps(doc))
    ok(database_url, "import_definitions", str(file))
    listed = ok(database_url, "list_queues", "name")
    for q in doc["queues"]:
        if q["vhost"] == "/":
            assert q["name"] in listed


def test_a_bad_file_is_a_data_error(database_url: str, tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text("{not json")
    assert ctl(database_url, "import_definitions", str(file)).returncode == 65
    assert ctl(database_url, "import_definitions", str(tmp_path / "missing.json")).returncode == 64
