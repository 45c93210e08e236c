-- Version 5 is PostgreSQL's index of each customer's unhandled events, which daemons
-- sharing a database look up to keep one customer's events in order. An embedded
-- database serves one daemon, whose per-customer queues keep that order, so it needs no
-- such index: this version changes nothing here, and keeps the numbers of both backends
-- meaning the same schema.
SELECT 1;
