-- Model discovery: every model a router's list (GET /models) has named, when
-- it was first and last listed, when it left the list (retired_at, NULL while
-- listed) and the prices the list published (USD per 1M tokens; NULL where it
-- published none). Several prober processes may record the same router's
-- list: every write carries the time its list was read (seen), and the rules
-- in catalog_queries.py make the outcome the same in whatever order the
-- writes arrive. Plain table in both storage modes.
CREATE TABLE model_catalog (
    router     text        NOT NULL,
    model      text        NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    retired_at timestamptz,
    input_usd_per_mtok  double precision CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok double precision CHECK (output_usd_per_mtok >= 0),
    PRIMARY KEY (router, model)
);
