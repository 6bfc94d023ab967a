package clientapi

import (
	"slices"
	"testing"
)

// TestJoinServers checks the servers a join of a room this server is not
// in goes through: those given (via, server_name, the alias's), then the
// room id's, each once, never this server or an invalid name.
func TestJoinServers(t *testing.T) {
	for _, c := range []struct {
		servers []string
		roomID  string
		want    []string
	}{
		{nil, "!abc:a.example", []string{"a.example"}},
		{[]string{"b.example", "a.example", "b.example"}, "!abc:a.example", []string{"b.example", "a.example"}},
		{[]string{"ours.example", "c.example:8448", "not a server", ""}, "!abc:ours.example", []string{"c.example:8448"}},
		// Room version 12 ids name no server.
		{[]string{"b.example"}, "!Ea1Y5PqS0E3ZP7qXg4zC7CtdT9OvN1m9xQ7zq1rJYf0", []string{"b.example"}},
		{nil, "!Ea1Y5PqS0E3ZP7qXg4zC7CtdT9OvN1m9xQ7zq1rJYf0", nil},
	} {
		given := slices.Clone(c.servers)
		if got := joinServers(c.servers, c.roomID, "ours.example"); !slices.Equal(got, c.want) {
			t.Errorf("joinServers(%q, %s) = %q, want %q", c.servers, c.roomID, got, c.want)
		}
		if !slices.Equal(given, c.servers) {
			t.Errorf("joinServers changed its argument: %q", c.servers)
		}
	}
}
