package syncapi

import (
	"context"

	"github.com/weft-chat/weft/sql"
)

// toDevice fills the to_device section. (In progress.)
func (b *syncBuilder) toDevice(ctx context.Context) error {
	return nil
}

// deviceLists fills the device_lists section. (In progress.)
func (b *syncBuilder) deviceLists(ctx context.Context, mems []sql.SyncMembership) error {
	return nil
}
