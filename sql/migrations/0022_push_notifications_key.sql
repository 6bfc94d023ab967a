-- push_notifications (0007) kept two keys that start with the user: its
-- primary key (user_id, event_nid) and the index push_notifications_user_room.
-- The counter inserts one row per member an event notifies, so each key
-- took a leaf page per member: a 50-member room's message wrote about 100
-- pages, most of the push counter's commit. One key does both jobs:
-- stream_pos is unique per event, so (user_id, room_nid, stream_pos) still
-- allows one row per user and event, and it serves the reads of a user's
-- notifications in a room (a thread's are picked among them: the unread
-- ones, which are few).
CREATE TABLE push_notifications_keyed (
    user_id TEXT NOT NULL,
    room_nid BIGINT NOT NULL,
    thread_id TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL,
    highlight BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, room_nid, stream_pos)
);
INSERT INTO push_notifications_keyed (user_id, room_nid, thread_id, event_nid, stream_pos, highlight)
SELECT user_id, room_nid, thread_id, event_nid, stream_pos, highlight FROM push_notifications;
DROP TABLE push_notifications;
ALTER TABLE push_notifications_keyed RENAME TO push_notifications;
-- Dropping the notifications of a redacted event.
CREATE INDEX push_notifications_event ON push_notifications (event_nid);
