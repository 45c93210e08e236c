-- Daemons sharing the database handle one customer's events in the order they were
-- accepted: a commit of an event first looks for earlier unhandled events of the same
-- customer. This index keeps that lookup to the customer's few unhandled events, however
-- long their history.
CREATE INDEX events_unhandled ON events (customer, seq) WHERE NOT processed;
