"""Typed keys for what the API application holds."""

from aiohttp import web

from .public_status import PublicStatus
from .refresh import Aggregator

AGGREGATOR = web.AppKey("aggregator", Aggregator)
PUBLIC_STATUS = web.AppKey("public_status", PublicStatus)  # the status page's per-refresh bodies
