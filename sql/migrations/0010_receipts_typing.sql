-- Typing notifications and read receipts (spec: Client-Server API, "Typing
-- Notifications" and "Receipts"): ephemeral room data that /sync serves
-- from the typing and receipts streams (counters in 0009). They live in
-- the database, not in one process's memory, so that every process serving
-- /sync agrees on them.

-- Who is typing where: a row per (room, user) while the user types. The
-- row goes when the user stops or when its expiry passes: the process
-- that set it deletes it on a timer, and every process sweeps the rows
-- that a process which died left behind. Expiring deletes only a row whose
-- expiry has passed, so a renewal wins over a late timer and two processes
-- never both report the same expiry.
CREATE TABLE typing (
    room_nid BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    -- When the typing ends unless the user renews it, in ms since the epoch.
    expires_ts BIGINT NOT NULL,
    PRIMARY KEY (room_nid, user_id)
);
-- The sweep of expired rows.
CREATE INDEX typing_expiry ON typing (expires_ts);

-- Each room's latest typing change (a start, a stop or an expiry), as a
-- typing stream position: a sync whose window holds it sends the room's
-- current typing list. The list replaces what the client knew (spec:
-- m.typing), so only the latest change of a room matters.
CREATE TABLE typing_rooms (
    room_nid BIGINT PRIMARY KEY,
    stream_pos BIGINT NOT NULL
);
CREATE INDEX typing_rooms_stream ON typing_rooms (stream_pos);

-- Read receipts: the latest of each (room, receipt type, user, thread).
-- m.fully_read is not here: it is room account data (read markers).
CREATE TABLE receipts (
    room_nid BIGINT NOT NULL,
    -- m.read or m.read.private (served to its owner alone).
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- '' for an unthreaded receipt; 'main' or a thread root's event id for
    -- a threaded one (spec: threaded read receipts).
    thread_id TEXT NOT NULL,
    -- The event read up to.
    event_id TEXT NOT NULL,
    -- That event's position in the room event stream: a receipt only
    -- moves forward (as in Synapse, one for an event at or before the
    -- current one is ignored).
    event_pos BIGINT NOT NULL,
    -- When the server received the receipt, in ms since the epoch.
    ts BIGINT NOT NULL,
    -- The receipts stream position of the latest write.
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_nid, receipt_type, user_id, thread_id)
);
-- The receipts of a user's rooms in a window of the stream.
CREATE INDEX receipts_room_stream ON receipts (room_nid, stream_pos);
CREATE INDEX receipts_stream ON receipts (stream_pos);
