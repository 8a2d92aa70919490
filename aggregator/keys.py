"""Typed keys for what the API application holds."""

from aiohttp import web

from .refresh import Aggregator

AGGREGATOR = web.AppKey("aggregator", Aggregator)
