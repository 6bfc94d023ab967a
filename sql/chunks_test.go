package sql

import (
	"slices"
	"testing"
)

func TestChunks(t *testing.T) {
	for n, want := range map[int][]int{0: nil, 1: {1}, 7: {4, 2, 1}, 512: {512}, 1234: {512, 512, 128, 64, 16, 2}} {
		var got []int
		total := 0
		for c := range chunks(make([]int, n)) {
			got = append(got, len(c))
			total += len(c)
		}
		if !slices.Equal(got, want) || total != n {
			t.Errorf("chunks of %d: %v, want %v", n, got, want)
		}
	}
}
