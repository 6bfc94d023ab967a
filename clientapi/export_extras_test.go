package clientapi

// SetMutualRoomsPageForTest sets how many rooms a page of /mutual_rooms
// holds, until the returned function restores it, so tests can page
// without making a hundred rooms.
func SetMutualRoomsPageForTest(n int) (restore func()) {
	old := mutualRoomsPage
	mutualRoomsPage = n
	return func() { mutualRoomsPage = old }
}
