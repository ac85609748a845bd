CREATE TABLE events (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    total_count  INTEGER NOT NULL CHECK (total_count > 0),
    starts_at    TIMESTAMPTZ NOT NULL,
    ends_at      TIMESTAMPTZ NOT NULL,
    code_prefix  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (starts_at < ends_at)
);

CREATE TABLE policies (
    event_id       TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    position       SMALLINT NOT NULL,
    discount_type  TEXT NOT NULL CHECK (discount_type IN ('PERCENT', 'AMOUNT')),
    discount_value BIGINT NOT NULL CHECK (discount_value > 0),
    weight         BIGINT NOT NULL CHECK (weight > 0),
    coupon_count   INTEGER NOT NULL CHECK (coupon_count >= 0),
    PRIMARY KEY (event_id, position)
);

-- One row per code. No foreign key to events: a preload writes up to ten
-- million rows in one transaction and per-row RI triggers would dominate its
-- time; coupons are only ever written by a preload of their own event, and
-- deleted with it (store::postgres::delete_event).
CREATE TABLE coupons (
    code           TEXT PRIMARY KEY,
    event_id       TEXT NOT NULL,
    policy_position SMALLINT NOT NULL,
    discount_type  TEXT NOT NULL,
    discount_value BIGINT NOT NULL,
    state          TEXT NOT NULL DEFAULT 'AVAILABLE' CHECK (state IN ('AVAILABLE', 'ISSUED')),
    user_id        TEXT,
    issued_at      TIMESTAMPTZ,
    request_id     TEXT,
    finalized_at   TIMESTAMPTZ,
    CHECK ((state = 'ISSUED') = (user_id IS NOT NULL))
);

CREATE INDEX coupons_event_state ON coupons (event_id, state);

-- The last guard of "no user holds two coupons of one event".
CREATE UNIQUE INDEX coupons_one_per_user ON coupons (event_id, user_id) WHERE state = 'ISSUED';
