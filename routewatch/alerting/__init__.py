"""Alert rules generated from probes.yaml's SLOs: Prometheus rules, their promtool tests, Grafana provisioning.

Pure: a :class:`~routewatch.config.Config` in, file contents out; nothing here
reads the clock, the network or the environment. The command line
(``routewatch alerts render``) writes what :func:`render_files` returns.

- :mod:`~routewatch.alerting.plan`: the numbers (windows, thresholds, the
  guards against thin data, the time each alert promises) derived from the
  configuration;
- :mod:`~routewatch.alerting.rules`: the Prometheus recording and alerting rules;
- :mod:`~routewatch.alerting.unit_tests`: a promtool unit test per alert;
- :mod:`~routewatch.alerting.grafana`: the same alerts as Grafana-managed alert provisioning;
- :mod:`~routewatch.alerting.files`: the files, their paths and their YAML.
"""

from routewatch.alerting.files import GRAFANA_FILE, RULES_FILE, TESTS_FILE, render_files
from routewatch.alerting.plan import AlertPlan, Deployment, plan_alerts

__all__ = ["GRAFANA_FILE", "RULES_FILE", "TESTS_FILE", "AlertPlan", "Deployment", "plan_alerts", "render_files"]
