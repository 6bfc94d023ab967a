package syncapi

import (
	"context"

	"github.com/weft-chat/weft/sql"
)

// readCountChanges fills b.countsChanged. (In progress.)
func (b *syncBuilder) readCountChanges(ctx context.Context, joined []sql.SyncMembership) error {
	return nil
}

// unreadCounts sets a joined room's unread counts. (In progress.)
func (b *syncBuilder) unreadCounts(ctx context.Context, m sql.SyncMembership, jr *joinedRoom) error {
	return nil
}
