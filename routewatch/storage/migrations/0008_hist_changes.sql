-- probe_hist_changes: which hours of probe_hist_hourly each transaction
-- changed, so that a standby aggregator keeping window sums in memory reads
-- only those hours again (aggregator/sliding.py, SlidingWindows.follow).
--
-- Filled by statement-level triggers on probe_hist_hourly, not by the code
-- that writes it: every writer (the rollup refresh, retention, an operator's
-- hand) is recorded, in the same transaction as its change. A row holds the
-- writing transaction's 64-bit id and one hour it inserted, deleted or
-- updated rows of; a standby finds what is new to it with
-- pg_visible_in_snapshot against the snapshot of its previous read, which
-- catches a transaction that committed after a later-numbered one.
-- bucket '-infinity' records a TRUNCATE: every hour changed.
--
-- The refreshing aggregator prunes rows older than a day and records in
-- routewatch_meta ('hist_changes_pruned') the highest transaction id pruned:
-- a standby whose previous snapshot does not see every pruned transaction
-- cannot tell what it missed, and rebuilds. A plain table in both modes.

CREATE TABLE probe_hist_changes (
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    bucket     timestamptz NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, bucket)
);

CREATE INDEX probe_hist_changes_changed_at ON probe_hist_changes (changed_at);

-- One function for inserts and deletes: each trigger names its transition
-- table `changed`.
CREATE FUNCTION probe_hist_note_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO probe_hist_changes (bucket)
    SELECT DISTINCT bucket FROM changed
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION probe_hist_note_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO probe_hist_changes (bucket)
    SELECT bucket FROM changed_old UNION SELECT bucket FROM changed_new
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION probe_hist_note_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO probe_hist_changes (bucket) VALUES ('-infinity') ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER probe_hist_inserted AFTER INSERT ON probe_hist_hourly
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION probe_hist_note_rows();
CREATE TRIGGER probe_hist_deleted AFTER DELETE ON probe_hist_hourly
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION probe_hist_note_rows();
CREATE TRIGGER probe_hist_updated AFTER UPDATE ON probe_hist_hourly
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION probe_hist_note_update();
CREATE TRIGGER probe_hist_truncated AFTER TRUNCATE ON probe_hist_hourly
    FOR EACH STATEMENT EXECUTE FUNCTION probe_hist_note_truncate();
