ALTER TABLE events DROP COLUMN control_seq;
