-- Device lists across servers (spec: Server-Server API, "Device
-- Management"): the cache of other servers' users' devices and
-- cross-signing keys, kept up to date by their m.device_list_update and
-- m.signing_key_update EDUs, and what this server last told other servers
-- of its own users' device lists.

-- A remote user whose device list this server tracks: one row per user
-- whose list was fetched whole (GET /user/devices) at least once.
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY,
    -- The stream_id of the latest update applied: that of the fetch, or
    -- of an m.device_list_update applied on top of it. An update whose
    -- prev_id names another one was preceded by one we missed.
    stream_id BIGINT NOT NULL,
    -- The events stream position just before the latest fetch. The cache
    -- holds every update since only while a local user and the remote
    -- user have stayed joined to one room since then: the remote server
    -- sends updates to the servers sharing a room with its user, and
    -- sends none to a server in the time it shares none.
    synced_pos BIGINT NOT NULL,
    -- TRUE when an update was missed and fetching the list failed: the
    -- cache is not used until a fetch succeeds.
    stale BOOLEAN NOT NULL DEFAULT FALSE
);

-- The devices of the tracked remote users.
CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    -- The device's public name as the remote server sent it ('' for none).
    display_name TEXT NOT NULL,
    -- The device's identity keys as the remote server sent them, byte for
    -- byte (their signatures must still verify); '' for a device without
    -- keys.
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- The master and self-signing keys of the tracked remote users (servers
-- never share user-signing keys), as sent.
CREATE TABLE remote_cross_signing_keys (
    user_id TEXT NOT NULL,
    -- master or self_signing.
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- The m.device_list_update sequence of each local user: the stream_id of
-- the latest update sent (to whichever servers shared a room with them
-- then; the sequence moves on even when none did, so that a server that
-- missed updates sees a prev_id it does not know and fetches the list).
-- It is also the stream_id of GET /user/devices.
CREATE TABLE device_list_outbound (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL
);

-- What the latest updates said of each local user's devices and
-- cross-signing keys: a hash of each as sent. The sender compares the
-- current keys with these to find what changed.
CREATE TABLE device_list_outbound_keys (
    user_id TEXT NOT NULL,
    -- device, master or self_signing.
    kind TEXT NOT NULL,
    -- The device id for a device; '' for a cross-signing key.
    device_id TEXT NOT NULL,
    -- SHA-256 of the JSON sent, hex.
    hash TEXT NOT NULL,
    PRIMARY KEY (user_id, kind, device_id)
);

-- How far the sender has read the device_lists stream: the changes of
-- local users at or before pos were turned into updates. One row.
CREATE TABLE device_list_outbound_position (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pos BIGINT NOT NULL
);
INSERT INTO device_list_outbound_position (id, pos) VALUES (1, 0);
