package sql

import (
	"iter"
	"math/bits"
)

// maxRows bounds the rows of one multi-row statement: at up to 7
// parameters a row it stays far below both engines' limits on parameters.
const maxRows = 512

// chunks splits s into runs whose lengths are powers of two, at most
// maxRows, longest first. A multi-row statement's text depends on its
// number of rows, and each text is prepared and kept per connection (by
// the SQLite statement cache, by pgx): with powers of two a statement has
// ten texts, not one for every number of rows up to the limit.
func chunks[T any](s []T) iter.Seq[[]T] {
	return func(yield func([]T) bool) {
		for len(s) > 0 {
			n := min(maxRows, 1<<(bits.Len(uint(len(s)))-1))
			if !yield(s[:n]) {
				return
			}
			s = s[n:]
		}
	}
}
