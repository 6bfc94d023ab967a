-- Signing keys of other servers: the key ring's cache and the notary's
-- store of key documents. Our own keys come from the config, never from
-- here.

-- Each remote key the key ring has accepted (fetched directly or through a
-- notary and checked), one row per key.
CREATE TABLE server_keys (
    -- The server the key belongs to, as in its key document.
    server_name TEXT NOT NULL,
    -- The key id, "ed25519:abc".
    key_id TEXT NOT NULL,
    -- The ed25519 public key, unpadded base64.
    public_key TEXT NOT NULL,
    -- Until when the key may be used, in milliseconds since the epoch: the
    -- document's valid_until_ts, capped at 7 days after the fetch (the rule
    -- of room versions 5 and later, so a far-future validity never spares
    -- us a refetch). 0 for an old key.
    valid_until_ts BIGINT NOT NULL,
    -- For a key listed in old_verify_keys, when it stopped being used, in
    -- milliseconds; 0 for a current key.
    expired_ts BIGINT NOT NULL,
    -- When we stored this row, in milliseconds.
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- Key documents exactly as their server signed them, kept so that our
-- notary (POST /_matrix/key/v2/query) can hand them on with the origin's
-- signature intact. Only documents fetched from the server itself are
-- kept (as Synapse does), never ones relayed by another notary. One row per
-- key id the document lists, so a query for an old key finds the last
-- document that carried it.
CREATE TABLE server_key_json (
    -- The server the document describes.
    server_name TEXT NOT NULL,
    -- A key id in the document's verify_keys or old_verify_keys.
    key_id TEXT NOT NULL,
    -- The signed document, canonical JSON.
    key_json TEXT NOT NULL,
    -- The document's valid_until_ts, in milliseconds (uncapped: it is the
    -- server's word, which the notary passes on).
    valid_until_ts BIGINT NOT NULL,
    -- When we fetched the document, in milliseconds; the notary refetches
    -- after half of the document's lifetime (keys_server.yaml).
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
