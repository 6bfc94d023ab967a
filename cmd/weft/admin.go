package main

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// admin holds the operator commands that act on the database directly.
func admin(_ context.Context, args, _ []string, _, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" {
		fmt.Fprintln(stderr, "Usage: weft admin COMMAND [flags]\n\nNo admin commands are built yet.")
		if len(args) == 0 {
			return errors.New("admin: expected a command")
		}
		return nil
	}
	return fmt.Errorf("admin: unknown command %q", args[0])
}
