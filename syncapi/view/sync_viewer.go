package view

// ForSync gives a user's view of a room as /sync sees it: with the user's
// membership as of the sync's position rather than now, and their ignored
// users read once for the whole sync rather than once per room. The
// caller has established that the user may read the room (they are or
// were joined at that position), which Open checks for other endpoints.
func ForSync(rooms Rooms, roomID, userID, membership string, ignored map[string]bool) *Viewer {
	return &Viewer{rooms: rooms, RoomID: roomID, UserID: userID, Membership: membership, ignored: ignored, memo: make(map[int64]bool)}
}
