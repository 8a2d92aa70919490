"""PostgreSQL/TimescaleDB: the schema and its migrations, the spool and batch writer,
housekeeping (partitions, retention, compression), the refresher lock, ``db status``,
and every SQL statement the layers above need: the table names (``tables``), the
writer-to-rollup handshake (``ingest_log``), the hourly rollup (``hist_queries``) and its
SQL-readable percentiles (``percentile_queries``),
the published history (``history_queries``), model state (``model_state_queries``)
and the exact reference (``reference_queries``).

Imports only configuration and result types; the aggregator and the command
line use it. The prober does not: it hands results to a sink.
"""
