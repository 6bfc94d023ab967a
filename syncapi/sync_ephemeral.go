package syncapi

import (
	"context"

	"github.com/weft-chat/weft/sql"
)

// readEphemeral fills b.ephemeral with the typing and receipt events of
// the joined rooms for the window. (Typing and receipts: in progress.)
func (b *syncBuilder) readEphemeral(ctx context.Context, joined []sql.SyncMembership) error {
	return nil
}
