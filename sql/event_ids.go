package sql

import "context"

// Translations between event ids and NIDs, for state resolution, which
// works on event ids while state snapshots hold NIDs.

// EventIDsByNID returns the event ids of the given NIDs (those not stored
// are absent).
func (t *Queries) EventIDsByNID(ctx context.Context, nids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(nids))
	for _, n := range chunkSizes(len(nids), 512) {
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
	for _, n := range chunkSizes(len(ids), 512) {
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
