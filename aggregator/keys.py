"""Typed keys for what the API application holds."""

from aiohttp import web

from .refresh import Aggregator

AGGREGATOR = web.AppKey("aggregator", Aggregator)

# Appended for the public status endpoints (public_routes.py); imported here,
# not at the top, so that the existing keys read as before.
from .public_status import PublicStatus

PUBLIC_STATUS = web.AppKey("public_status", PublicStatus)
