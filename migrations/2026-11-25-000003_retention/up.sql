-- When an ended event had nothing left pending and its Redis keys were given
-- their expiry: the sweeper stops visiting it (an extension clears it).
ALTER TABLE events ADD COLUMN settled_at TIMESTAMPTZ;
CREATE INDEX events_unsettled ON events (id) WHERE state = 'LIVE' AND settled_at IS NULL;
