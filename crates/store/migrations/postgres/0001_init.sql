-- Waymark's durable state, PostgreSQL edition: the tables, columns and indexes of the
-- SQLite edition, in PostgreSQL's types. Times are BIGINT nanoseconds since the Unix epoch
-- (UTC), as there: exact round trips for the engine's instants and plain integer order for
-- the wake and retry indexes. JSON columns hold serde_json text, as there too: the stored
-- text is exactly what was accepted (JSONB would reorder an object's keys and refuse a
-- `\u0000` escape in a string), and no query looks inside them.

-- One row per customer id ever seen. A profile merged away by an alias keeps its row with
-- `merged_into` set, so that later input addressed to it is redirected.
CREATE TABLE profiles (
    id             TEXT PRIMARY KEY,
    traits         TEXT NOT NULL DEFAULT '{}',
    segments       TEXT NOT NULL DEFAULT '{}',
    enrollment_seq BIGINT NOT NULL DEFAULT 0,
    merged_into    TEXT,
    -- Bumped by every commit: a commit that read an older revision is refused, so two
    -- writers (tasks or replicas) never overwrite each other's move of one customer.
    revision       BIGINT NOT NULL DEFAULT 1,
    updated_at     BIGINT NOT NULL
);

-- Every event accepted. `processed` false marks the inbox: accepted (and acknowledged) but
-- not yet handed to the engine; the daemon replays those at start. `customer` is the id
-- the event was addressed to until processed, then the profile it joined.
CREATE TABLE events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer    TEXT NOT NULL,
    name        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    properties  TEXT NOT NULL DEFAULT '{}',
    message_id  TEXT,
    received_at BIGINT NOT NULL,
    processed   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX events_customer ON events (customer, at, seq);
CREATE INDEX events_inbox ON events (seq) WHERE NOT processed;

-- `messageId`s seen recently: a repeat within the dedup window is acknowledged and
-- ignored. Rows older than the window are pruned.
CREATE TABLE message_ids (
    message_id  TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);

CREATE TABLE enrollments (
    id           TEXT PRIMARY KEY,
    customer     TEXT NOT NULL,
    -- Position in the customer's enrollment list, which the engine keeps in entry order.
    ord          BIGINT NOT NULL,
    journey      TEXT NOT NULL,
    version      TEXT NOT NULL,
    key          TEXT,
    step         BIGINT NOT NULL,
    -- `active`, or the outcome it ended with.
    status       TEXT NOT NULL,
    wake_at      BIGINT,
    trigger_data TEXT NOT NULL DEFAULT '{}',
    event_data   TEXT NOT NULL DEFAULT '{}',
    variant      TEXT,
    control      BOOLEAN NOT NULL DEFAULT FALSE,
    entered_at   BIGINT NOT NULL,
    ended_at     BIGINT,
    sends        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX enrollments_customer ON enrollments (customer, ord);
CREATE INDEX enrollments_wake ON enrollments (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX enrollments_journey ON enrollments (journey, status);

-- The files each loaded journey version was built from, so an enrollment on a version no
-- longer in the journeys directory can still be run after a restart.
CREATE TABLE journey_versions (
    journey   TEXT NOT NULL,
    version   TEXT NOT NULL,
    -- {"relative/path.yaml": "file text", ...}
    files     TEXT NOT NULL,
    loaded_at BIGINT NOT NULL,
    PRIMARY KEY (journey, version)
);

-- Messages to hand to channels. The idempotency key makes the engine's output and the
-- provider's deduplication line up across retries and restarts.
CREATE TABLE outbox (
    idempotency_key TEXT PRIMARY KEY,
    channel         TEXT NOT NULL,
    address         TEXT,
    content         TEXT NOT NULL,
    customer        TEXT NOT NULL,
    journey         TEXT NOT NULL,
    step            TEXT NOT NULL,
    template        TEXT NOT NULL,
    -- pending, sent or failed
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- When the row may next be claimed. A claim pushes it forward by the lease, so a
    -- dispatcher that dies mid-delivery leaves the row to be claimed again.
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    provider_id     TEXT,
    created_at      BIGINT NOT NULL,
    done_at         BIGINT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';

-- Every message the engine produced, whatever became of it: sent, skipped (with the
-- reason), suppressed, or failed (the channel gave up). Frequency caps count `sent`.
CREATE TABLE message_log (
    idempotency_key TEXT PRIMARY KEY,
    customer        TEXT NOT NULL,
    enrollment      TEXT NOT NULL,
    journey         TEXT NOT NULL,
    step            TEXT NOT NULL,
    template        TEXT NOT NULL,
    channel         TEXT,
    variant         TEXT,
    transactional   BOOLEAN NOT NULL,
    outcome         TEXT NOT NULL,
    reason          TEXT,
    at              BIGINT NOT NULL
);
CREATE INDEX message_log_customer ON message_log (customer, at);

-- The next cron tick of each `schedule` journey.
CREATE TABLE schedule_ticks (
    journey TEXT PRIMARY KEY,
    next_at BIGINT NOT NULL
);
