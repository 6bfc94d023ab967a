package sql

import "time"

// nowMillis is the current time in Matrix's unit, milliseconds since the epoch.
func nowMillis() int64 { return time.Now().UnixMilli() }
