-- The timer loop reads due timers in batches, each starting after the (wake_at, id) of the
-- last timer it took. With the id in the index that is one seek, even when a million
-- enrollments wait for the same instant (`wait_until: "10:00"`); with wake_at alone,
-- every batch would scan the timers before it that share its wake time.
DROP INDEX enrollments_wake;
CREATE INDEX enrollments_wake ON enrollments (wake_at, id) WHERE wake_at IS NOT NULL;
