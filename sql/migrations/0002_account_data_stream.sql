-- Stream positions, and account data as a stream that /sync reads by
-- position.

-- One counter row per stream (account data here; room events, receipts,
-- to-device and the rest add theirs in their own migrations). A writer takes
-- the next position with UPDATE ... SET pos = pos + 1 ... RETURNING pos in
-- the transaction that writes the data: the row stays locked until that
-- transaction ends (PostgreSQL's row lock; SQLite's single writer), so
-- positions commit in order and a reader that sees pos = N has every write
-- at or below N. A plain sequence would not give that: writers could commit
-- out of order and a sync could skip a position it reads later.
CREATE TABLE stream_positions (
    stream TEXT PRIMARY KEY,
    -- The last position handed out (0: none yet); the next write takes pos + 1.
    pos BIGINT NOT NULL
);
INSERT INTO stream_positions (stream, pos) VALUES ('account_data', 0);

-- The position of the latest write of each (user, room, type): a row moves
-- forward each time it is written, so "everything after N" is its newest
-- content once, never a history.
ALTER TABLE account_data ADD COLUMN stream_pos BIGINT NOT NULL DEFAULT 0;
CREATE INDEX account_data_stream ON account_data (localpart, stream_pos);
