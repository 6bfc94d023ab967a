-- Federation transactions (spec: Server-Server API, "Transactions"): the
-- outbound queue of each destination server, the destinations' back-off
-- and sending leases, and what inbound transactions and to-device
-- messages were already handled, so that a retry is not applied twice.

-- What each destination is still to receive. An item stays here until the
-- destination answers 200 to the transaction carrying it, so nothing
-- queued is lost to a restart or to a destination that is down.
CREATE TABLE federation_queue (
    -- The item's place: a destination gets its items in this order.
    queue_id {{SERIAL}},
    -- The server the item goes to.
    destination TEXT NOT NULL,
    -- For an EDU, its edu_type; '' for a PDU.
    edu_type TEXT NOT NULL,
    -- For an EDU, its content object as JSON; '' for a PDU.
    content TEXT NOT NULL,
    -- For a PDU, its event id (the event JSON is read when the transaction
    -- is built); '' for an EDU.
    event_id TEXT NOT NULL,
    -- The transaction the item was put in; '' until then. It is never
    -- changed afterwards: a retry resends the same items under the same
    -- transaction id, which the destination deduplicates (spec: the sender
    -- "must wait and retry for a 200 OK response before sending a
    -- transaction with a different txnId").
    txn_id TEXT NOT NULL,
    -- When it was queued, in milliseconds since the epoch.
    created_ts BIGINT NOT NULL
);
-- A worker reads its destination's transaction in flight (txn_id <> '')
-- or its next items (txn_id = '', by queue_id).
CREATE INDEX federation_queue_destination ON federation_queue (destination, txn_id, queue_id);

-- Each destination a worker has sent to: its back-off after failures
-- (kept across restarts, so a dead server is not hammered after one) and
-- the lease that lets one process at a time send to it.
CREATE TABLE federation_destinations (
    -- The destination server name.
    destination TEXT PRIMARY KEY,
    -- When the current run of failures began, in milliseconds; 0 when the
    -- last attempt succeeded.
    failure_ts BIGINT NOT NULL,
    -- The current back-off interval, in milliseconds; 0 when not failing.
    retry_interval_ms BIGINT NOT NULL,
    -- When the next attempt may be made, in milliseconds; 0 for now.
    retry_at_ts BIGINT NOT NULL,
    -- The process sending to the destination ('' for none) and until when
    -- its lease holds, in milliseconds. An expired lease is free, so a
    -- process that died holds nothing for long.
    lease_owner TEXT NOT NULL,
    lease_expires_ts BIGINT NOT NULL
);

-- The answers to inbound transactions, so that a retried transaction (same
-- origin, same id) gets the first answer and is not processed twice.
-- Rows older than a day are pruned as transactions arrive.
CREATE TABLE federation_inbound_txns (
    -- The authenticated origin server.
    origin TEXT NOT NULL,
    -- Its transaction id.
    txn_id TEXT NOT NULL,
    -- The response body sent, JSON.
    response TEXT NOT NULL,
    -- When it was handled, in milliseconds.
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_created ON federation_inbound_txns (created_ts);

-- The message_id of each m.direct_to_device EDU delivered, per origin,
-- so that one arriving again (in another transaction, after the
-- transaction answers were pruned) is not delivered twice. Kept for a
-- week, longer than a sender backs off.
CREATE TABLE federation_inbound_to_device (
    -- The origin server.
    origin TEXT NOT NULL,
    -- The EDU's message_id.
    message_id TEXT NOT NULL,
    -- When it was delivered, in milliseconds.
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX federation_inbound_to_device_created ON federation_inbound_to_device (created_ts);
