"""Settings for a broker node (pydantic-settings, env prefix ``CAVALCADE_``). No I/O here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a node can be told, from the command line or ``CAVALCADE_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="CAVALCADE_", env_nested_delimiter="__")

    host: str = "0.0.0.0"
    port: int = 5672
    database_url: str | None = None
    data_dir: Path = Path("./cavalcade-data")
    node_name: str | None = None
    workers: int = 1
    notify: Literal["listen", "poll"] = "listen"
    poll_interval: float = 1.0
    sweep_interval: float = 0.25
    vacuum_interval: float = 10.0
    database_wait: float = 60.0

    frame_max: int = 131072
    channel_max: int = 2047
    heartbeat: int = 60
    handshake_timeout: float = 10.0
    max_message_size: int = 128 * 1024 * 1024
    publish_backlog_bytes: int = 64 * 1024 * 1024
    node_heartbeat: float = 2.0
    node_death_threshold: float = 10.0
    pool_size: int = 8
    log_level: str = "INFO"

    # The management HTTP API, /metrics and the dashboard (cavalcade.management).
    management: bool = True
    management_port: int = 15672
    management_host: str | None = None  # default: ``host``
    management_tls: bool = False  # serve it over HTTPS with the --tls-cert/--tls-key pair
    stats_interval: float = 5.0  # how often each node publishes its counters

    def effective_management_host(self) -> str:
        """Where the management listener binds: ``--management-host`` or ``--host``."""
        return self.management_host if self.management_host is not None else self.host

    def effective_node_name(self) -> str:
        """The node label: ``--node-name`` or ``cavalcade@HOST:PORT``."""
        if self.node_name:
            return self.node_name
        import socket

        return f"cavalcade@{socket.gethostname()}:{self.port}"
