-- Unread notification counts kept up to date (spec: /sync
-- unread_notifications), as Synapse's event_push_summary: /sync reads one
-- row per room and thread instead of counting the push_notifications rows
-- (0007) of every room at every sync. The push counter adds to a row in
-- the transaction that records an event's notifications; a receipt, the
-- user's own event, a redaction recount the rows of the threads they read
-- from push_notifications, which stays the truth.
--
-- A row counts the unread rows of push_notifications of its user, room and
-- thread as of its last write. Rows counted after a read marker moved past
-- them (the counter runs behind the room) and rows before the user's
-- membership event are not unread: a reader compares first_pos and
-- last_pos with the markers and the membership, and counts the rows
-- themselves when a row may hold some of those (see
-- sql.UnreadCountsInRooms).
CREATE TABLE push_summaries (
    user_id TEXT NOT NULL,
    room_nid BIGINT NOT NULL,
    -- 'main' or a thread root's event id, as in push_notifications.
    thread_id TEXT NOT NULL,
    -- The unread notifications, and those among them that highlight.
    notifications BIGINT NOT NULL,
    highlights BIGINT NOT NULL,
    -- The stream positions of the oldest and the newest of them (0 when
    -- there are none).
    first_pos BIGINT NOT NULL,
    last_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_nid, thread_id)
);

-- The push counter skips the members who already read an event it counts:
-- the markers of a room at or past a position.
CREATE INDEX push_read_markers_room ON push_read_markers (room_nid, read_pos);

INSERT INTO push_summaries (user_id, room_nid, thread_id, notifications, highlights, first_pos, last_pos)
SELECT n.user_id, n.room_nid, n.thread_id, COUNT(*), SUM(CASE WHEN n.highlight THEN 1 ELSE 0 END),
    MIN(n.stream_pos), MAX(n.stream_pos)
FROM push_notifications n
WHERE NOT EXISTS (SELECT 1 FROM push_read_markers k WHERE k.user_id = n.user_id AND k.room_nid = n.room_nid
    AND k.thread_id IN ('', n.thread_id) AND k.read_pos >= n.stream_pos)
GROUP BY n.user_id, n.room_nid, n.thread_id;
