-- How far each consumer of the room event stream has got, so that it can
-- catch up from the database after a crash, a restart or a lost NATS
-- publish (DESIGN.md: every consumer records the last position it handled
-- in the database). NATS only wakes such a consumer; what it handles it
-- reads from the events table after its position.
CREATE TABLE consumer_positions (
    -- The consumer, by its durable name (e.g. federation-sender).
    consumer TEXT PRIMARY KEY,
    -- The last stream position it handled: everything at or below it is
    -- done.
    pos BIGINT NOT NULL
);
-- The federation sender starts where the events stream is: what was
-- committed before this migration was queued through its JetStream
-- consumer already.
INSERT INTO consumer_positions (consumer, pos) SELECT 'federation-sender', pos FROM stream_positions WHERE stream = 'events';
