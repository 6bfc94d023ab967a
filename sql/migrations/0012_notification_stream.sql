-- The notifications stream: when each user's unread notification counts in
-- each room last changed (spec: /sync unread_notifications). The push
-- counter runs behind the room (it consumes room.output), so a sync may
-- serve an event before its notifications are counted; the counter takes a
-- position of the 'notifications' stream (0009) in the transaction that
-- changes the counts, and the next sync whose window holds that position
-- puts the room in its response with the new counts.
--
-- One row per (user, room), moved forward at every change, rather than a
-- position on each push_notifications row: counts also change when rows
-- are deleted (the user's own event reads the room, a redaction takes its
-- notification back), which leaves no row to carry a position.
CREATE TABLE push_count_changes (
    -- A local user.
    user_id TEXT NOT NULL,
    room_nid BIGINT NOT NULL,
    -- The position of the latest change, in the notifications stream.
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_nid)
);
-- A sync reads the rooms whose counts changed in its window for one user.
CREATE INDEX push_count_changes_user_pos ON push_count_changes (user_id, stream_pos);
