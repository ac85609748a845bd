DROP INDEX events_preparing;
ALTER TABLE events
    DROP COLUMN state, DROP COLUMN preload_id, DROP COLUMN written_count,
    DROP COLUMN failure, DROP COLUMN lease_until, DROP COLUMN generate_ms,
    DROP COLUMN database_ms, DROP COLUMN redis_ms, DROP COLUMN total_ms;
