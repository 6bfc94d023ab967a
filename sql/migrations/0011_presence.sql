-- Presence (spec: Presence module): one row per user whose presence was
-- ever set; a user without a row is offline. Every change a client should
-- see takes the next position of the presence stream (0009) in the
-- transaction that writes it; the bookkeeping of timers and throttled
-- sync times is written without one, so that a sync does not wake
-- everyone who shares a room with the user.
CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    -- online, unavailable or offline.
    state TEXT NOT NULL,
    -- The status message the user set; '' for none.
    status_msg TEXT NOT NULL DEFAULT '',
    -- When the server last saw the user active, in ms since the epoch (0:
    -- never); last_active_ago is computed from it when read.
    last_active_ts BIGINT NOT NULL DEFAULT 0,
    -- When the user's latest sync ends or ended: its start plus its
    -- long-poll timeout, in ms. 30 s after both this and last_active_ts
    -- the user goes offline (Synapse's SYNC_ONLINE_TIMEOUT).
    last_sync_ts BIGINT NOT NULL DEFAULT 0,
    -- What clients were last told of currently_active: online and active
    -- within the last minute.
    currently_active BOOLEAN NOT NULL DEFAULT FALSE,
    -- When a timeout may next change the row, in ms (0: never, as for an
    -- offline user); the sweeper reads the due rows by it.
    timer_ts BIGINT NOT NULL DEFAULT 0,
    -- Presence stream position of the latest change clients should see.
    stream_pos BIGINT NOT NULL
);
-- An incremental /sync reads the rows changed in its window.
CREATE INDEX presence_stream ON presence (stream_pos);
-- The sweeper reads the rows whose timer is due; offline rows have none.
CREATE INDEX presence_timer ON presence (timer_ts) WHERE timer_ts > 0;
-- /sync sends the presence of users who joined a room the caller is in
-- during its window: the room's memberships by stream position.
CREATE INDEX room_members_room_pos ON room_members (room_nid, stream_pos);
