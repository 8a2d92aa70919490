"""Publishing: the catalog API, its OpenAPI document, the status page and its JSON twin,
badges, ``/metrics``, HTTP caching and errors, and the server's connection limits.

Reads what the aggregator computed; the statistics core never imports it.
"""
