-- Model status, incidents and daily uptime (aggregator/model_state.py, written by
-- aggregator/model_state_store.py). The leading aggregator evaluates the status at
-- each refresh and upserts these tables; standbys and the API read them.
-- Small plain tables, the same in both storage modes.

-- One row per monitored model: where its state machine stands. The counters,
-- latch and as_of let a new leader carry on where the last one stopped.
CREATE TABLE model_status (
    model                 text        PRIMARY KEY,
    state                 text        NOT NULL CHECK (state IN ('operational', 'degraded', 'down', 'unknown')),
    since                 timestamptz NOT NULL,
    reason                text        NOT NULL,
    consecutive_failures  integer     NOT NULL,
    consecutive_successes integer     NOT NULL,
    latched_down          boolean     NOT NULL,
    as_of                 timestamptz,
    updated_at            timestamptz NOT NULL
);

-- Spans during which some model was degraded or down; "end" is NULL while open.
-- Maintenance deletes closed ones older than the raw-data retention.
CREATE TABLE incidents (
    id          integer     PRIMARY KEY,
    start       timestamptz NOT NULL,
    "end"       timestamptz,
    worst_state text        NOT NULL CHECK (worst_state IN ('degraded', 'down')),
    models      text[]      NOT NULL,
    suppressed  boolean     NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX incidents_end ON incidents ("end");

-- Seconds per state, per model and UTC day; maintenance keeps UPTIME_DAYS (90) days.
CREATE TABLE uptime_daily (
    model         text             NOT NULL,
    day           date             NOT NULL,
    operational_s double precision NOT NULL DEFAULT 0,
    degraded_s    double precision NOT NULL DEFAULT 0,
    down_s        double precision NOT NULL DEFAULT 0,
    unknown_s     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (model, day)
);
CREATE INDEX uptime_daily_day ON uptime_daily (day);
