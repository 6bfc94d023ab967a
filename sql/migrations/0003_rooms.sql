-- The room event graph: rooms, events, state snapshots, current state and
-- the per-user membership index. Numeric ids (NIDs) keep joins and state
-- snapshots small.

CREATE TABLE rooms (
    room_nid {{SERIAL}},
    room_id TEXT NOT NULL UNIQUE,
    room_version TEXT NOT NULL,
    -- The state after the forward extremities (the room's current state).
    state_snapshot_nid BIGINT NOT NULL DEFAULT 0,
    -- JSON list of the event ids with no successors, the prev_events of the
    -- next local event.
    forward_extremities TEXT NOT NULL DEFAULT '[]',
    -- The greatest depth of any event in the room.
    max_depth BIGINT NOT NULL DEFAULT 0,
    -- The stream position of the room's latest change, which tells a writer
    -- whether its cached view of the room is stale.
    last_stream_pos BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE events (
    event_nid {{SERIAL}},
    room_nid BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    -- NULL for message events.
    state_key TEXT,
    sender TEXT NOT NULL,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    -- Position in the room event stream; NULL for outliers, which are not
    -- part of the timeline.
    stream_pos BIGINT UNIQUE,
    -- The state before this event.
    state_before_nid BIGINT NOT NULL DEFAULT 0,
    -- The event as signed (replaced by its redacted form once redacted).
    json TEXT NOT NULL,
    outlier BOOLEAN NOT NULL DEFAULT FALSE,
    rejected BOOLEAN NOT NULL DEFAULT FALSE,
    -- The event id of the redaction that redacted this event, if any.
    redacted_by TEXT
);
CREATE INDEX events_room_depth ON events (room_nid, depth, event_nid);
CREATE INDEX events_room_stream ON events (room_nid, stream_pos);

-- State snapshots: a snapshot is its base snapshot plus its own entries,
-- which add or replace (type, state_key) pairs. Chains stay short: past
-- a limit a snapshot is written in full (base 0).
CREATE TABLE state_snapshots (
    snapshot_nid {{SERIAL}},
    room_nid BIGINT NOT NULL,
    base_nid BIGINT NOT NULL,
    chain_length INTEGER NOT NULL
);

CREATE TABLE state_snapshot_entries (
    snapshot_nid BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (snapshot_nid, type, state_key)
);

-- The current state of each room, for fast reads.
CREATE TABLE current_state (
    room_nid BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (room_nid, type, state_key)
);

-- Each user's current membership of each room they have one in.
CREATE TABLE room_members (
    room_nid BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    -- Stream position of the membership event.
    stream_pos BIGINT NOT NULL,
    -- Set by /forget: the room no longer shows up for the user.
    forgotten BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (room_nid, user_id)
);
CREATE INDEX room_members_user ON room_members (user_id, membership);

-- Inputs already handled, with the events they made, so a redelivered or
-- retried input (a client's transaction id) returns the same events.
CREATE TABLE room_inputs (
    input_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    -- JSON list of event ids.
    event_ids TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- The client transaction behind a local event, for unsigned.transaction_id,
-- which only the sending device sees.
CREATE TABLE event_transactions (
    event_nid BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL
);

INSERT INTO stream_positions (stream, pos) VALUES ('events', 0);
