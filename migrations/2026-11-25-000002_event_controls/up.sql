-- Operators' controls of a live event: paused, and every control recorded
-- with when and why (ends_at: the window's end it set, for close/extend).
ALTER TABLE events ADD COLUMN paused BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE event_controls (
    id        BIGSERIAL PRIMARY KEY,
    event_id  TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    action    TEXT NOT NULL CHECK (action IN ('pause', 'resume', 'close', 'extend')),
    reason    TEXT NOT NULL,
    ends_at   TIMESTAMPTZ,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX event_controls_event ON event_controls (event_id, at);
