\timing on
CREATE TEMP TABLE probe AS SELECT upper(substr(md5(random()::text || i), 1, 12)) AS code FROM generate_series(1, 50000) i;
INSERT INTO probe SELECT code FROM archived_coupons TABLESAMPLE SYSTEM (0.2) LIMIT 50000;
SELECT count(*) FROM archived_coupons WHERE code = ANY (ARRAY(SELECT code FROM probe));
SELECT count(*) FROM archived_coupons WHERE code COLLATE "C" = ANY (ARRAY(SELECT code COLLATE "C" FROM probe));
SELECT count(*) FROM archived_coupons WHERE code = ANY (ARRAY(SELECT code FROM probe));
SELECT count(*) FROM archived_coupons WHERE code COLLATE "C" = ANY (ARRAY(SELECT code COLLATE "C" FROM probe));
SELECT count(*) FROM archived_coupons WHERE code = ANY (ARRAY(SELECT code FROM probe));
SELECT count(*) FROM archived_coupons WHERE code COLLATE "C" = ANY (ARRAY(SELECT code COLLATE "C" FROM probe));
SELECT count(*) FROM archived_coupons WHERE code = ANY (ARRAY(SELECT code FROM probe));
SELECT count(*) FROM archived_coupons WHERE code COLLATE "C" = ANY (ARRAY(SELECT code COLLATE "C" FROM probe));
