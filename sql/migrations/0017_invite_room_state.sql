-- The stripped state another server sent with an invite of one of our
-- users to a room this server is not in (federation PUT /invite): what
-- the invitee's /sync shows in invite_state, since there is no room state
-- here to strip.
CREATE TABLE invite_room_state (
    event_nid BIGINT PRIMARY KEY,
    -- JSON list of stripped state events.
    state TEXT NOT NULL
);
