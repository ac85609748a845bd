DROP TABLE coupons;
DROP TABLE policies;
DROP TABLE events;
