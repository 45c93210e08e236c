-- Values the daemon generates once and must keep, such as the secret that signs the
-- unsubscribe and tracking links in messages already sent.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
