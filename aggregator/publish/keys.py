"""Typed keys for what the API application holds."""

from aiohttp import web

from routewatch.aggregator.publish.public_status import PublicStatus
from routewatch.aggregator.refresh import Aggregator

AGGREGATOR = web.AppKey("aggregator", Aggregator)
PUBLIC_STATUS = web.AppKey("public_status", PublicStatus)  # the status page's per-refresh bodies
