ALTER TABLE events DROP COLUMN archived_at;
DROP TABLE archived_coupons;
