"""Settings for a broker node (pydantic-settings, env prefix ``CAVALCADE_``). No I/O here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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
    control_interval: float = 1.0  # how often a node applies operator changes
    vacuum_interval: float = 10.0
    database_wait: float = 60.0

    frame_max: int = 131072
    channel_max: int = 2047
    heartbeat: int = 60
    handshake_timeout: float = 10.0
    # RabbitMQ's limit: 128 MiB by default, at most 512 MiB (a bytea holds under 1 GiB).
    max_message_size: int = Field(default=128 * 1024 * 1024, gt=0, le=512 * 1024 * 1024)
    publish_backlog_bytes: int = 64 * 1024 * 1024
    # RabbitMQ's vm_memory_high_watermark: a fraction of RAM (<= 1) or bytes (> 1); 0 is
    # off. Above it, publishers are blocked until the node's resident memory falls again.
    memory_high_watermark: float = 0.4
    node_heartbeat: float = 2.0
    node_death_threshold: float = 10.0
    # Advisory-lock liveness: hold a lock for the node's life, look at the others' locks
    # this often (a killed node is reaped within about this long).
    node_lock: bool = True
    node_liveness_interval: float = 0.5
    pool_size: int = 8
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    # amqps listener (beside the plain one unless plain_listener is off)
    tls_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_verify_peer: bool = False
    tls_fail_if_no_peer_cert: bool = False
    plain_listener: bool = True

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
