package sql

import "context"

// Translations between event ids and NIDs, for state resolution, which
// works on event ids while state snapshots hold NIDs.

// EventIDsByNID returns the event ids of the given NIDs (those not stored
// are absent).
func (t *Queries) EventIDsByNID(ctx context.Context, nids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(nids))
	for _, n := range chunkSizes(len(nids), maxInList) {
		args := make([]any, n)
		for i, nid := range nids[:n] {
			args[i] = nid
		}
		nids = nids[n:]
		if err := t.scanIDPairs(ctx, `SELECT event_nid, event_id FROM events WHERE event_nid IN (`+placeholders(1, n)+`)`, args,
			func(nid int64, id string) { out[nid] = id }); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// EventNIDsByID returns the NIDs of the given event ids (those not stored
// are absent).
func (t *Queries) EventNIDsByID(ctx context.Context, ids []string) (map[string]int64, error) {
	out := make(map[string]int64, len(ids))
	for _, n := range chunkSizes(len(ids), maxInList) {
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		ids = ids[n:]
		if err := t.scanIDPairs(ctx, `SELECT event_nid, event_id FROM events WHERE event_id IN (`+placeholders(1, n)+`)`, args,
			func(nid int64, id string) { out[id] = nid }); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// KnownEvent is what a room holds of one of its events.
type KnownEvent struct {
	NID      int64
	Rejected bool
}

// KnownEvents returns, of the given event ids, those the room holds, without
// their JSON: what a writer needs to leave them out of a batch of events
// to store and to refer to them.
func (t *Queries) KnownEvents(ctx context.Context, roomNID int64, ids []string) (map[string]KnownEvent, error) {
	out := make(map[string]KnownEvent)
	for _, n := range chunkSizes(len(ids), maxInList) {
		args := make([]any, 0, n+1)
		args = append(args, roomNID)
		for _, id := range ids[:n] {
			args = append(args, id)
		}
		ids = ids[n:]
		rows, err := t.q.QueryContext(ctx, `SELECT event_id, event_nid, rejected FROM events
			WHERE room_nid = $1 AND event_id IN (`+placeholders(2, n)+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			var k KnownEvent
			if err := rows.Scan(&id, &k.NID, &k.Rejected); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = k
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (t *Queries) scanIDPairs(ctx context.Context, query string, args []any, f func(nid int64, id string)) error {
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var nid int64
		var id string
		if err := rows.Scan(&nid, &id); err != nil {
			return err
		}
		f(nid, id)
	}
	return rows.Err()
}
