-- Reports users make of content (spec "Reporting content"), kept for this
-- server's admins: events (POST /rooms/{roomId}/report/{eventId}), whole
-- rooms (POST /rooms/{roomId}/report) and users (POST /users/{userId}/report).

CREATE TABLE reports (
    report_id {{SERIAL}},
    -- What was reported: 'event', 'room' or 'user'.
    kind TEXT NOT NULL,
    -- The user who made the report.
    reporter TEXT NOT NULL,
    -- The room of an event or room report; NULL for user reports.
    room_id TEXT,
    -- The reported event; NULL unless kind is 'event'.
    event_id TEXT,
    -- The reported user, or for an event report the event's sender (kept
    -- so admins can list reports against a user without the event).
    target_user_id TEXT,
    -- The reporter's reason; NULL when they gave none (event reports make
    -- it optional).
    reason TEXT,
    -- The score event reports carried before spec v1.18 (-100 most
    -- offensive to 0 inoffensive); NULL when not given.
    score BIGINT,
    -- When the report was received, in milliseconds since the epoch.
    received_ts BIGINT NOT NULL
);
-- Admins list one kind of report, newest or oldest first.
CREATE INDEX reports_kind ON reports (kind, report_id);
