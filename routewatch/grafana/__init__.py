"""Grafana: routewatch's dashboards as code (``dashboards``), rendered to the JSON committed under ``dashboards/``."""
