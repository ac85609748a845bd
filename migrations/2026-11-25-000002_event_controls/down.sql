DROP TABLE event_controls;
ALTER TABLE events DROP COLUMN paused;
