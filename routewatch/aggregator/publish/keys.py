"""Typed keys for what the API application holds."""

from aiohttp import web

from routewatch.aggregator.publish.model_page_store import ModelPages
from routewatch.aggregator.publish.public_status import PublicStatus
from routewatch.aggregator.refresh import Aggregator

AGGREGATOR = web.AppKey("aggregator", Aggregator)
PUBLIC_STATUS = web.AppKey("public_status", PublicStatus)  # the status page's per-refresh bodies
MODEL_PAGES = web.AppKey("model_pages", ModelPages)  # the model pages' per-refresh bodies
PUBLIC_URL = web.AppKey("public_url", str)  # api.public_url: the embed snippets' base ("" when not set)
