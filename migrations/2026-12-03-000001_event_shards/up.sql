-- How many shards an event's codes are split over in Redis (1: the keys
-- every event had before). Fixed for the event's life: a user's home shard
-- is a hash of the user id modulo this count.
ALTER TABLE events ADD COLUMN shards INTEGER NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 16);
