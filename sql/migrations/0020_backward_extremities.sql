-- Gaps in rooms' timelines (Synapse: event_backward_extremities). An
-- event stored into a timeline whose prev events are not in it (not
-- received, or stored only as outliers, as at a join or where remote input
-- bridged a gap with /state_ids) marks the history before it as
-- incomplete: /messages, paging back to it, asks other servers for the
-- missing events (GET /backfill). A row goes when its prev event takes
-- its place in the timeline, or when there is nothing this server may
-- fetch there.
CREATE TABLE backward_extremities (
    room_nid BIGINT NOT NULL,
    -- The timeline event whose prev event is missing: the history before
    -- it has a hole.
    event_nid BIGINT NOT NULL,
    -- The prev event that is not in the timeline: where a backfill starts.
    prev_event_id TEXT NOT NULL,
    -- Backfill attempts back off: none is made before next_attempt_ts
    -- (milliseconds), and each one doubles backoff_ms, up to a bound.
    next_attempt_ts BIGINT NOT NULL DEFAULT 0,
    backoff_ms BIGINT NOT NULL,
    PRIMARY KEY (event_nid, prev_event_id)
);
-- Clearing the rows of an event that arrives.
CREATE INDEX backward_extremities_prev ON backward_extremities (prev_event_id);
-- The gaps of a room, which /messages reads with the events' positions.
CREATE INDEX backward_extremities_room ON backward_extremities (room_nid);
