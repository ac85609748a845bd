-- An ended event's coupons once archived (`coupond archive`): the issued
-- ones only, moved out of `coupons` so that the table every preload and
-- every finalizer batch writes keeps only the events still in play. Its
-- code index is only read after the move (a preload's uniqueness check),
-- never written at random by a drop, and holders are answered from it.
-- The codes nobody was given are dropped: never handed out, they may be
-- drawn again.
-- The code compares bytewise (COLLATE "C"): a preload looks every code it
-- writes up here, and the database's locale (often C.UTF-8, which
-- PostgreSQL compares with strcoll) made those lookups a fifth slower.
CREATE TABLE archived_coupons (
    code            TEXT COLLATE "C" PRIMARY KEY,
    event_id        TEXT NOT NULL,
    policy_position SMALLINT NOT NULL,
    discount_type   TEXT NOT NULL,
    discount_value  BIGINT NOT NULL,
    user_id         TEXT NOT NULL,
    issued_at       TIMESTAMPTZ NOT NULL,
    request_id      TEXT,
    finalized_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX archived_coupons_one_per_user ON archived_coupons (event_id, user_id);

-- When the event's coupons were moved to archived_coupons: no control,
-- rebuild or reconcile touches it afterwards.
ALTER TABLE events ADD COLUMN archived_at TIMESTAMPTZ;
