"""Placeholder until the admin use-cases land."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    del app
