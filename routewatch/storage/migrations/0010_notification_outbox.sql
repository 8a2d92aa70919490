-- The notification outbox (routewatch/storage/outbox_queries.py, sent by
-- routewatch/notify/). One row per (incident transition, target), inserted in
-- the same transaction as the incident row it reports, so a transition and
-- its notifications are stored together or not at all. The leader's sender
-- claims due rows with FOR UPDATE SKIP LOCKED, posts, and marks them.
-- No secret is stored here: targets are referred to by name, their URLs and
-- keys are read from the environment when a row is sent.
-- A small plain table, the same in both storage modes.
CREATE TABLE notification_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id     integer     NOT NULL,
    -- With the id, the incident: ids start again at 1 should retention delete every incident.
    incident_start  timestamptz NOT NULL,
    transition      text        NOT NULL CHECK (transition IN ('open', 'close')),
    target          text        NOT NULL,
    -- What happened, as the sender renders it for the target's format (no secret in it).
    event           jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    last_error      text,
    UNIQUE (incident_id, incident_start, transition, target)
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at) WHERE state = 'pending';
