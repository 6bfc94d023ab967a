-- Send-to-device messaging, device-list tracking and dehydrated devices
-- (spec: Client-Server API, "Send-to-Device messaging", "Tracking the
-- device list for a user"; MSC3814). To-device messages and device-list
-- changes are the to_device and device_lists streams of /sync (counters
-- in 0009).

-- The inbox of each local device: messages wait here until a sync (or,
-- for a dehydrated device, a call of its events endpoint) acknowledges
-- them by coming back with a token past their position.
CREATE TABLE to_device_messages (
    -- The recipient's localpart.
    localpart TEXT NOT NULL,
    -- The recipient device.
    device_id TEXT NOT NULL,
    -- The message's to_device stream position; unique across inboxes.
    pos BIGINT NOT NULL,
    -- The sender's full user id (a remote one once federation delivers).
    sender TEXT NOT NULL,
    -- The event type.
    type TEXT NOT NULL,
    -- The content object, as JSON.
    content TEXT NOT NULL,
    -- When it was stored, in milliseconds since the epoch.
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id, pos)
);

-- The transaction ids of PUT /sendToDevice already handled, so that a
-- retry sends nothing twice (spec: transaction ids are scoped to a device
-- and an endpoint, whose path holds the event type). Rows older than a
-- day are pruned as the device sends more.
CREATE TABLE to_device_txns (
    -- The sending device's owner's localpart.
    localpart TEXT NOT NULL,
    -- The sending device.
    device_id TEXT NOT NULL,
    -- The event type of the request path.
    type TEXT NOT NULL,
    -- The client's transaction id.
    txn_id TEXT NOT NULL,
    -- When it was handled, in milliseconds since the epoch.
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id, type, txn_id)
);

-- The latest change of each user's device list (device keys added or
-- removed, cross-signing keys replaced, devices deleted), as a
-- device_lists stream position. Only the latest change of a user matters:
-- "changed" tells a client to fetch the user's keys again, and a window
-- holding the latest change says so.
CREATE TABLE device_list_changes (
    -- Whose devices or keys changed (a remote user once federation
    -- delivers m.device_list_update).
    user_id TEXT NOT NULL,
    -- '' for a change everyone sharing a room with user_id sees; else the
    -- one user who sees it: a signature they made over user_id's keys,
    -- which only the signer's own devices need to learn of.
    observer TEXT NOT NULL,
    -- The device_lists stream position of the change.
    pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, observer)
);
-- Syncs read the changes of a window of the stream.
CREATE INDEX device_list_changes_pos ON device_list_changes (pos);

-- Each user's dehydrated device (MSC3814): a device that receives
-- to-device messages while the user has no device signed in, and that a
-- new login rehydrates. The device itself is a row of devices, with its
-- keys in the e2e tables; this row holds what only the client can read.
CREATE TABLE dehydrated_devices (
    -- The owner's localpart; one dehydrated device per user.
    localpart TEXT PRIMARY KEY,
    -- The device id of the dehydrated device.
    device_id TEXT NOT NULL,
    -- The client's encrypted device_data object, as JSON.
    device_data TEXT NOT NULL,
    -- When it was stored, in milliseconds since the epoch.
    created_ts BIGINT NOT NULL
);

-- Device-list tracking reads the membership changes of a window of the
-- event stream in a user's rooms through room_members_room_pos (0011).
