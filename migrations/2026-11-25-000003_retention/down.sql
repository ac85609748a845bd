DROP INDEX events_unsettled;
ALTER TABLE events DROP COLUMN settled_at;
