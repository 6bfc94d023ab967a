package syncapi

import "context"

// presence fills the presence section. (In progress.)
func (b *syncBuilder) presence(ctx context.Context) error {
	return nil
}
