"""Getting probe results from the prober to where they are stored, without losing one.

- :mod:`~routewatch.delivery.spool`: the local append-only journal every result enters first;
- :mod:`~routewatch.delivery.spooled`: the loop that delivers spooled results in batches to a
  destination, confirms them, and replays the spool after an outage or a crash;
- :mod:`~routewatch.delivery.push`: the destination of a prober without database credentials,
  ``POST /v1/ingest`` on a central routewatch over HTTPS.

The database's destination is ``routewatch.storage.writer``. This package imports
only result types (and no database driver), so a pushing prober loads no database code.
"""
