-- Preload is a job the server owns (service::preload). The event row is
-- written first, in state PREPARING with a preload id, before any code; the
-- preload id is the job's fencing token: every write of the job checks it,
-- and a server that takes over a job whose lease ran out draws a new one.
ALTER TABLE events
    ADD COLUMN state         TEXT NOT NULL DEFAULT 'LIVE'
        CHECK (state IN ('PREPARING', 'LIVE', 'FAILED')),
    ADD COLUMN preload_id    TEXT NOT NULL DEFAULT '',
    -- Coupon rows the job has committed so far (its progress).
    ADD COLUMN written_count INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN failure       TEXT,
    -- Until when the owning server's lease runs; another server (or the
    -- same one after a restart) takes a PREPARING job over once it passed.
    ADD COLUMN lease_until   TIMESTAMPTZ,
    -- The job's timings, kept so a repeated Preload gets the same answer.
    ADD COLUMN generate_ms   BIGINT,
    ADD COLUMN database_ms   BIGINT,
    ADD COLUMN redis_ms      BIGINT,
    ADD COLUMN total_ms      BIGINT;

-- Events preloaded before jobs existed are live and complete.
UPDATE events SET written_count = total_count;

CREATE INDEX events_preparing ON events (lease_until) WHERE state = 'PREPARING';
