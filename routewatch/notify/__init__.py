"""Incident notifications: the outbox sender and the formats it posts.

- :mod:`~routewatch.notify.targets`: the configured targets with their URLs
  and keys read from the environment (never from the file, never stored);
- :mod:`~routewatch.notify.formats`: one outbox row as the HTTP request of
  each kind (generic webhook, Slack, PagerDuty Events API v2, Grafana
  annotation);
- :mod:`~routewatch.notify.signing`: the generic webhook's HMAC-SHA256
  signature, and how a receiver checks it;
- :mod:`~routewatch.notify.sender`: the leader's loop that claims due rows
  of ``notification_outbox``, posts them and records the outcome.

The rows are written by storage with the incident transition itself
(``routewatch.storage.outbox_queries``); docs/notifications.md has the design.
"""
