-- Sharded probing. The series of a region are hashed to a fixed number of
-- shards; the prober processes of the region (its members) split the shards
-- between them through these two tables. Every time here is the database's
-- clock (now() of the writing transaction), so members never compare their
-- own clocks with one another. Plain tables in both storage modes.

-- The members of each region's prober group: a member is live while its
-- expires_at is ahead of now(); each heartbeat moves it on. joined_at orders
-- the members when they share out the shards.
CREATE TABLE shard_members (
    region     text        NOT NULL,
    member     text        NOT NULL,
    host       text        NOT NULL,
    pid        integer     NOT NULL,
    joined_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (region, member)
);

-- One lease per (region, shard). owner NULL: free. Otherwise the owner probes
-- the shard's slots from owned_from on, and before expires_at (which each of
-- its heartbeats renews) and, when it has offered the shard to another
-- member, before handover_at: the slot from which the taker probes.
CREATE TABLE shard_leases (
    region      text        NOT NULL,
    shard       integer     NOT NULL CHECK (shard >= 0),
    owner       text,
    owned_from  timestamptz,
    expires_at  timestamptz,
    handover_at timestamptz,
    PRIMARY KEY (region, shard),
    CHECK ((owner IS NULL) = (expires_at IS NULL) AND (owner IS NULL) = (owned_from IS NULL)),
    CHECK (handover_at IS NULL OR owner IS NOT NULL)
);

CREATE INDEX shard_leases_owner ON shard_leases (region, owner);
