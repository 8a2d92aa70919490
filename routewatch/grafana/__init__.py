"""Grafana: publishing dashboards, data sources and alert rules to a Grafana server.

:mod:`~routewatch.grafana.publish` is ``routewatch grafana publish``; it needs
the extra ``routewatch[grafana]`` (grafana-client).
"""
