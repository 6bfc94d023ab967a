package bus

import (
	"fmt"
	"hash/fnv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names. They are constants so that consumers name streams the same
// way the table below declares them.
const (
	// StreamRoomInput is the work queue of room inputs (events to be
	// authorised and committed to a room).
	StreamRoomInput = "ROOM_INPUT"
	// StreamRoomOutput carries room events after they are committed.
	StreamRoomOutput = "ROOM_OUTPUT"
	// StreamEphemeral carries short-lived data such as typing and presence.
	StreamEphemeral = "EPHEMERAL"
)

// Subject wildcards captured by each stream, for consumers that want all of a
// stream rather than one shard or room.
const (
	// RoomInputSubjects matches every subject RoomInputSubject can return.
	RoomInputSubjects = "room.input.>"
	// RoomOutputSubjects matches every subject RoomOutputSubject can return.
	RoomOutputSubjects = "room.output.>"
	// EphemeralSubjects matches every ephemeral subject.
	EphemeralSubjects = "ephemeral.>"
)

// streams is the single place where Weft's JetStream streams are declared.
// Open applies it with CreateOrUpdateStream, so editing an entry here updates
// the stream on the next start. Note that the server refuses some changes to
// an existing stream (storage type, retention policy); those need a manual
// migration.
var streams = []jetstream.StreamConfig{
	{
		Name:        StreamRoomInput,
		Description: "room inputs waiting to be processed",
		Subjects:    []string{RoomInputSubjects},
		// WorkQueue: a message is removed once a consumer acks it, which is
		// what a queue of pending inputs needs. It also means the server
		// rejects overlapping consumers, so each input has one owner.
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
		Replicas:  1,
	},
	{
		Name:        StreamRoomOutput,
		Description: "room events after commit",
		Subjects:    []string{RoomOutputSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		// The database is the source of truth; the stream only has to
		// bridge restarts and slow consumers, so a day is plenty.
		MaxAge:   24 * time.Hour,
		Replicas: 1,
	},
	{
		Name:        StreamEphemeral,
		Description: "typing, presence and other short-lived data",
		Subjects:    []string{EphemeralSubjects},
		Retention:   jetstream.LimitsPolicy,
		// Memory: losing typing notifications on restart is harmless and
		// they are not worth disk writes.
		Storage: jetstream.MemoryStorage,
		MaxAge:  5 * time.Minute,
		// Bound memory use so a presence storm cannot eat the JetStream
		// memory budget shared with other streams.
		MaxBytes: 64 << 20,
		Replicas: 1,
	},
}

// RoomInputSubject returns the room input subject for roomID, spread over
// shards subjects (room.input.0 .. room.input.<shards-1>) so that inputs for
// one room always land on the same shard and stay ordered, while different
// rooms can be processed in parallel. The room ID is hashed because room IDs
// may contain characters ('.', '*', '>', spaces) that are not safe in NATS
// subjects. shards < 1 is treated as 1.
func RoomInputSubject(roomID string, shards int) string {
	if shards < 1 {
		shards = 1
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(roomID))
	return fmt.Sprintf("room.input.%d", h.Sum32()%uint32(shards))
}

// RoomOutputSubject returns the per-room output subject,
// room.output.<16 hex digits of the 64-bit FNV-1a hash of roomID>. It is
// hashed for the same reason as RoomInputSubject; 64 bits keep collisions
// between rooms negligible, so consumers can filter on one room.
func RoomOutputSubject(roomID string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(roomID))
	return fmt.Sprintf("room.output.%016x", h.Sum64())
}
