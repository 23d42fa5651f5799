"""What every handler reaches through the aiohttp app and request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cavalcade.broker.monitoring import ManagementUser
from cavalcade.broker.service import Broker
from cavalcade.settings import Settings


@dataclass
class Context:
    broker: Broker
    settings: Settings
    listeners: list[dict[str, Any]] = field(default_factory=list)


CTX = web.AppKey("cavalcade", Context)
USER: str = "cavalcade.user"
__all__ = ["CTX", "USER", "Context", "ManagementUser"]
