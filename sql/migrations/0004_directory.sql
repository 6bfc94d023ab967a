-- Room aliases hosted on this server and the published room directory.

-- Each alias this server hosts (#localpart:this.server) and the room it
-- points to. Aliases of other servers are resolved over federation and
-- never stored here.
CREATE TABLE room_aliases (
    -- The whole alias, "#localpart:server". Case sensitive, as in Synapse:
    -- #Foo and #foo are two aliases.
    alias TEXT PRIMARY KEY,
    -- The room the alias resolves to. No foreign key: a room may have many
    -- aliases, and an alias may be reserved by createRoom in the same breath
    -- as the room is made.
    room_id TEXT NOT NULL,
    -- The user who created the alias; they may always delete it again.
    creator TEXT NOT NULL,
    -- When the alias was created, in milliseconds since the epoch.
    created_ts BIGINT NOT NULL
);
-- GET /rooms/{roomId}/aliases lists a room's aliases.
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- The rooms published in this server's room directory (visibility
-- "public"); a room without a row is "private".
CREATE TABLE room_directory (
    -- The published room.
    room_id TEXT PRIMARY KEY,
    -- When the room was published, in milliseconds since the epoch.
    published_ts BIGINT NOT NULL
);
