"""Grafana: routewatch's dashboards as code (``dashboards``), rendered to the JSON committed
under ``dashboards/``, and publishing them, the data sources and the alert rules to a Grafana
server (``publish``: ``routewatch grafana publish``, which needs the extra ``routewatch[grafana]``).
"""
