-- What each probe cost, and the spend per day that the API, /metrics and the
-- budget read. cost_usd is computed by the prober from the tokens and the
-- model's price at the time (NULL: the model had no price), so the figures
-- stay as they were measured when prices change later.
ALTER TABLE probe_results ADD COLUMN cached_input_tokens integer;
ALTER TABLE probe_results ADD COLUMN cost_usd double precision;

-- One row per UTC day and series, added to by the writer in the transaction
-- that inserts the probes (only the rows newly inserted, so a batch written
-- twice is counted once). Reading spend never scans probe_results.
CREATE TABLE probe_cost_daily (
    day           date             NOT NULL,
    router        text             NOT NULL,
    model         text             NOT NULL,
    prompt        text             NOT NULL,
    probes        bigint           NOT NULL,
    priced_probes bigint           NOT NULL,  -- probes with a cost (the model had a price)
    cost_usd      double precision NOT NULL,  -- sum over priced probes
    PRIMARY KEY (day, router, model, prompt)
);

-- Series the budget paused for a UTC day, written by the aggregator's leader
-- when the day's spend crossed budget.usd_per_day, read by every prober
-- process (which skips them) and by the API, /metrics and the status page.
-- A new day has no rows: probing resumes when the day turns.
CREATE TABLE budget_pauses (
    day           date             NOT NULL,
    router        text             NOT NULL,
    model         text             NOT NULL,
    prompt        text             NOT NULL,
    usd_per_day   double precision NOT NULL,  -- the series' measured cost rate when it was paused
    paused_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (day, router, model, prompt)
);
