-- End-to-end encryption: device keys, one-time and fallback keys,
-- cross-signing keys and the signatures users make over them, and
-- server-side key backup. Keys are stored as the canonical JSON the client
-- uploaded (minus signatures made later through /keys/signatures/upload,
-- which live in e2e_signatures and are merged in when keys are read).

-- The identity keys of each device (POST /keys/upload device_keys).
CREATE TABLE e2e_device_keys (
    -- The owner's localpart.
    localpart TEXT NOT NULL,
    -- The device the keys belong to.
    device_id TEXT NOT NULL,
    -- The device_keys object as uploaded, in canonical JSON, with its
    -- self-signature.
    key_json TEXT NOT NULL,
    -- When it was uploaded, in milliseconds since the epoch.
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id)
);

-- Unclaimed one-time keys; a claim deletes the row it hands out.
CREATE TABLE e2e_one_time_keys (
    -- The owner's localpart.
    localpart TEXT NOT NULL,
    -- The device that holds the private half.
    device_id TEXT NOT NULL,
    -- The full key id, <algorithm>:<key id>.
    key_id TEXT NOT NULL,
    -- The algorithm part of key_id, for counts and claims by algorithm.
    algorithm TEXT NOT NULL,
    -- The key object (or string for unsigned algorithms) as uploaded, in
    -- canonical JSON.
    key_json TEXT NOT NULL,
    -- When it was uploaded; claims hand out the oldest first.
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (localpart, device_id, key_id)
);
CREATE INDEX e2e_one_time_keys_claim ON e2e_one_time_keys (localpart, device_id, algorithm, added_ts);

-- The one fallback key per device and algorithm, handed out when the
-- one-time keys run out; it is marked used, never deleted, until replaced.
CREATE TABLE e2e_fallback_keys (
    -- The owner's localpart.
    localpart TEXT NOT NULL,
    -- The device that holds the private half.
    device_id TEXT NOT NULL,
    -- The key's algorithm (one key per algorithm).
    algorithm TEXT NOT NULL,
    -- The full key id, <algorithm>:<key id>.
    key_id TEXT NOT NULL,
    -- The key object as uploaded, in canonical JSON.
    key_json TEXT NOT NULL,
    -- Whether a claim has handed it out since it was uploaded.
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (localpart, device_id, algorithm)
);

-- Each user's current cross-signing keys.
CREATE TABLE e2e_cross_signing_keys (
    -- The owner's localpart.
    localpart TEXT NOT NULL,
    -- master, self_signing or user_signing.
    key_type TEXT NOT NULL,
    -- The unpadded base64 ed25519 public key (the key's id without its
    -- "ed25519:" prefix), which signatures name.
    public_key TEXT NOT NULL,
    -- The CrossSigningKey object as uploaded, in canonical JSON.
    key_json TEXT NOT NULL,
    -- When it was uploaded, in milliseconds since the epoch.
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (localpart, key_type)
);

-- Signatures uploaded through /keys/signatures/upload, over a device's keys
-- or a cross-signing key, merged into that key's "signatures" on reads.
CREATE TABLE e2e_signatures (
    -- The localpart of the user whose key is signed.
    target_localpart TEXT NOT NULL,
    -- The signed key: a device id or a cross-signing public key.
    target_key_id TEXT NOT NULL,
    -- The full user id of the signer.
    signer_user_id TEXT NOT NULL,
    -- The signing key, ed25519:<device id or public key>.
    signer_key_id TEXT NOT NULL,
    -- The unpadded base64 signature.
    signature TEXT NOT NULL,
    PRIMARY KEY (target_localpart, target_key_id, signer_user_id, signer_key_id)
);

-- Server-side key backup versions (/room_keys/version). Deleted versions
-- keep their row so that a version number is never reused.
CREATE TABLE key_backup_versions (
    -- The owner's localpart.
    localpart TEXT NOT NULL,
    -- The version number, increasing per user; the API shows it as a string.
    version BIGINT NOT NULL,
    -- The backup algorithm, e.g. m.megolm_backup.v1.curve25519-aes-sha2.
    algorithm TEXT NOT NULL,
    -- The algorithm-dependent auth_data object, in canonical JSON.
    auth_data TEXT NOT NULL,
    -- Bumped each time the version's keys change; the API shows it as a string.
    etag BIGINT NOT NULL DEFAULT 0,
    -- Whether the version was deleted (its keys are gone).
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (localpart, version)
);

-- The backed-up room keys, one per (version, room, session).
CREATE TABLE key_backup_sessions (
    -- The owner's localpart.
    localpart TEXT NOT NULL,
    -- The backup version the key belongs to.
    version BIGINT NOT NULL,
    -- The room of the megolm session.
    room_id TEXT NOT NULL,
    -- The megolm session id.
    session_id TEXT NOT NULL,
    -- The first message index the backed-up key can decrypt; lower wins.
    first_message_index BIGINT NOT NULL,
    -- How many times the key was forwarded before reaching the uploader;
    -- lower wins.
    forwarded_count BIGINT NOT NULL,
    -- Whether the uploader verified the device the key came from; verified wins.
    is_verified BOOLEAN NOT NULL,
    -- The encrypted session_data object, in canonical JSON.
    session_data TEXT NOT NULL,
    PRIMARY KEY (localpart, version, room_id, session_id)
);
