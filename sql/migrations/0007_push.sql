-- Push rules (spec: Client-Server API, "Push Rules") and the unread
-- notification counts computed from them (spec: "Receiving notifications",
-- "Marking notifications as read").

-- The rules users define themselves. Server-default rules (rule ids
-- starting with '.') are not stored: they live in the code (push/defaults.go)
-- and only a user's changes to them are kept, in push_rule_settings.
CREATE TABLE push_rules (
    -- The rule's owner, a full user id.
    user_id TEXT NOT NULL,
    -- override, content, room, sender or underride.
    kind TEXT NOT NULL,
    -- Unique within the user's rules of the kind. For room and sender
    -- rules it is the room or user id the rule applies to.
    rule_id TEXT NOT NULL,
    -- Order among the user's rules of the kind: the higher, the more
    -- important. Gaps are fine; PUT with before/after shifts the others.
    priority BIGINT NOT NULL,
    -- JSON array of conditions, as the client sent them (override and
    -- underride rules); NULL for the other kinds, whose condition is
    -- implied by the rule id or the pattern.
    conditions TEXT,
    -- The glob of a content rule; NULL for the other kinds.
    pattern TEXT,
    -- JSON array of actions, with the historical ones stripped.
    actions TEXT NOT NULL,
    -- Disabled rules never match. New rules start enabled.
    enabled BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- A user's changes to server-default rules: the only parts of those a user
-- may change are whether they are enabled and their actions.
CREATE TABLE push_rule_settings (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- The server-default rule's id (starts with '.').
    rule_id TEXT NOT NULL,
    -- NULL: as the default says.
    enabled BOOLEAN,
    -- JSON array of actions replacing the default's; NULL: the default's.
    actions TEXT,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- One row per user whose rules or settings ever changed. Evaluators cache
-- compiled rulesets per (user, version) and read the versions along with
-- the room's members, so a change reaches every process without a message.
CREATE TABLE push_rules_versions (
    user_id TEXT PRIMARY KEY,
    -- Bumped in the transaction of every change; no row means version 0,
    -- the server-default rules alone.
    version BIGINT NOT NULL
);

-- The unread notifications: one row per (user, event) for each event whose
-- push rules said "notify" for that local user. Rows are deleted when the
-- user's read receipt moves to or past them (and when the user leaves the
-- room), so the table holds unread notifications only.
CREATE TABLE push_notifications (
    user_id TEXT NOT NULL,
    room_nid BIGINT NOT NULL,
    -- 'main' for the main timeline, else the event id of the thread root
    -- (spec: threaded read receipts).
    thread_id TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    -- The event's position in the room event stream, which receipts are
    -- compared against.
    stream_pos BIGINT NOT NULL,
    -- The highlight tweak of the rule that matched.
    highlight BOOLEAN NOT NULL,
    -- Counting an event twice (a redelivered room.output message) is a
    -- no-op.
    PRIMARY KEY (user_id, event_nid)
);
-- Counting a user's unread notifications per room and thread, and
-- clearing them up to a position.
CREATE INDEX push_notifications_user_room ON push_notifications (user_id, room_nid, thread_id, stream_pos);
-- Dropping the notifications of a redacted event.
CREATE INDEX push_notifications_event ON push_notifications (event_nid);

-- How far each user has read each room, per thread, as far as counting is
-- concerned: the furthest of their m.read and m.read.private receipts and
-- of their own events. Rows only move forward. Notifications at or before
-- a marker are read even if they were counted after the marker moved (the
-- counter runs behind the room), which is why the counts read this table
-- as well as deleting rows.
CREATE TABLE push_read_markers (
    user_id TEXT NOT NULL,
    room_nid BIGINT NOT NULL,
    -- '' for an unthreaded receipt, which covers every thread; 'main' or a
    -- thread root's event id for a threaded one.
    thread_id TEXT NOT NULL,
    -- The stream position read up to, inclusive.
    read_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_nid, thread_id)
);

-- How far the push-counts consumer of room.output has counted each room, so
-- that /sync can tell whether the counts include an event yet.
CREATE TABLE push_counted_rooms (
    room_nid BIGINT PRIMARY KEY,
    -- The greatest stream position counted.
    stream_pos BIGINT NOT NULL
);
