-- Reading room timelines: topological pagination (/messages, /context),
-- timestamp lookups (timestamp_to_event) and the relations between events
-- (m.relates_to), which the relations API, threads and bundled
-- aggregations read.

-- /messages and /context walk a room in topological order: depth, then
-- stream position to break ties between events of equal depth.
CREATE INDEX events_room_topological ON events (room_nid, depth, stream_pos);
-- timestamp_to_event finds the event nearest a time.
CREATE INDEX events_room_ts ON events (room_nid, origin_server_ts);

-- One row per event whose content carries an m.relates_to with both a
-- rel_type and an event_id (rich replies, which have neither, are not
-- relations here). Written in the transaction that stores the child, so
-- the index never lags the timeline. A redacted child loses its relation:
-- readers skip children whose events.redacted_by is set, rather than
-- deleting rows here, so that the redaction path needs no second hook.
CREATE TABLE event_relations (
    -- The child: the event whose content carries m.relates_to.
    event_nid BIGINT PRIMARY KEY,
    -- The child's room. A relation is only valid when the parent is in the
    -- same room, which readers check by looking the parent up in this room.
    room_nid BIGINT NOT NULL,
    -- The parent's event id as the child names it. The parent may not be
    -- stored (yet), so this is an id, not a NID.
    relates_to_id TEXT NOT NULL,
    -- The relation type: m.thread, m.replace, m.annotation, m.reference or
    -- any other string a client used.
    rel_type TEXT NOT NULL,
    -- m.relates_to.key of an m.annotation (the reaction), NULL for other
    -- relations: kept for de-duplicating annotations at send time.
    aggregation_key TEXT
);
-- Children of a parent, per relation type.
CREATE INDEX event_relations_parent ON event_relations (relates_to_id, rel_type);
-- A room's threads (rel_type m.thread), for GET /threads.
CREATE INDEX event_relations_room_type ON event_relations (room_nid, rel_type);
