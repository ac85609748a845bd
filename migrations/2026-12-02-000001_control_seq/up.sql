-- Every control of an event gets the next number: Redis applies a control
-- only when it is newer than what its meta hash holds, so a control applied
-- late (a retried call, the sweeper's repair, a rebuild's copy) never undoes
-- a newer one.
ALTER TABLE events ADD COLUMN control_seq BIGINT NOT NULL DEFAULT 0;
