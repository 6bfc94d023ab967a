package sql

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Rows passed as one JSON array.
//
// A statement that takes its rows as one parameter, a JSON array of
// arrays, has one text whatever their number: it is prepared once per
// connection, and its rows are never split for the engines' limits on
// parameters. A VALUES list with parameters in every row had a text per
// number of rows (chunks keeps those to powers of two), so a room's 49
// members took three statements, each a round trip on PostgreSQL.

// jsonColumns is the select list of the rows of the JSON array that
// dialect.jsonElements lists: column i is element i of each row, cast to
// types[i].
func jsonColumns(types ...string) string {
	cols := make([]string, len(types))
	for i, typ := range types {
		cols[i] = fmt.Sprintf("CAST(value->>%d AS %s)", i, typ)
	}
	return strings.Join(cols, ", ")
}

// jsonRows selects the rows of the JSON array in parameter $1, as
// jsonColumns reads them. It ends with WHERE true, which an INSERT ...
// SELECT ... ON CONFLICT needs on SQLite: without a WHERE, SQLite reads
// ON CONFLICT as the ON of a join.
func (t *Queries) jsonRows(types ...string) string {
	return "SELECT " + jsonColumns(types...) + " FROM " + t.dialect.jsonElements + " WHERE true"
}

// jsonArg is the JSON array parameter of jsonColumns: the row of each
// item, its values in the order of the columns.
func jsonArg[T any](items []T, row func(T) []any) (string, error) {
	rows := make([][]any, len(items))
	for i, it := range items {
		rows[i] = row(it)
	}
	data, err := json.Marshal(rows)
	return string(data), err
}
