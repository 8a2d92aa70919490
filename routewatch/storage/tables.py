"""The name of every table routewatch reads or writes, once.

Code builds its SQL from these constants, so a table is renamed (or found) in
one place; the migrations' SQL files (``migrations/``) spell them out, as
they must stay as they were applied.
"""

from __future__ import annotations

# Bookkeeping of the schema itself (created by migrate's bootstrap).
SCHEMA_MIGRATIONS = "schema_migrations"
META_TABLE = "routewatch_meta"  # key/value: storage mode, the hourly rollup's generation

# Raw probe results: partitioned by day (plain) or a hypertable (TimescaleDB).
PROBE_RESULTS = "probe_results"
# The batch writer's per-session staging table (TEMP, emptied at commit).
PROBE_RESULTS_STAGING = "probe_results_staging"
# One row per stored batch, until the hourly histogram rollup has taken it in.
PROBE_INGEST_LOG = "probe_ingest_log"

# Hourly rollups: counts and mergeable latency histograms (what the aggregator
# publishes from), and their counts and percentiles in a form SQL can read
# (what Grafana reads), written together.
PROBE_HIST_HOURLY = "probe_hist_hourly"
PROBE_PERCENTILES_HOURLY = "probe_percentiles_hourly"
# Which hours of probe_hist_hourly each transaction changed (written by triggers).
PROBE_HIST_CHANGES = "probe_hist_changes"

# The published figures over time.
STATS_HISTORY = "stats_history"

# Model state: the current state per model, incidents, seconds per state per day.
MODEL_STATUS = "model_status"
INCIDENTS = "incidents"
UPTIME_DAILY = "uptime_daily"

# Sharded probing: the prober processes of each region, and one lease per
# (region, shard) saying which of them probes the shard's series.
SHARD_MEMBERS = "shard_members"
SHARD_LEASES = "shard_leases"

# Incident notifications waiting to be posted (or posted, or given up): one row
# per (incident transition, target), written with the transition itself.
NOTIFICATION_OUTBOX = "notification_outbox"

# Model discovery: every model a router's list has named, when it was listed
# and when it left the list (retired), with the list's prices.
MODEL_CATALOG = "model_catalog"
# Spend per UTC day and series, added to by the writer (0014).
PROBE_COST_DAILY = "probe_cost_daily"
# Series the budget paused for a UTC day, written by the leader, read by the probers (0014).
BUDGET_PAUSES = "budget_pauses"
