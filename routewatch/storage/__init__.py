"""PostgreSQL/TimescaleDB: the schema and its migrations, the spool and batch writer,
housekeeping (partitions, retention, compression), the refresher lock, ``db status``.

Imports only configuration and result types; the aggregator and the command
line use it. The prober does not: it hands results to a sink.
"""
