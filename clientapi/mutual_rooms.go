package clientapi

import (
	"encoding/base64"
	"net/http"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

// mutualRoomsPage is how many room ids one page of GET /mutual_rooms
// holds (a variable so that tests can page through a few rooms).
var mutualRoomsPage = 100

type mutualRoomsResponse struct {
	Joined    []string `json:"joined"`
	Count     int      `json:"count"`
	NextBatch string   `json:"next_batch,omitempty"`
}

// mutualRooms is GET /_matrix/client/v1/mutual_rooms (spec v1.19,
// mutual_rooms.yaml): the rooms both the caller and user_id are joined to,
// by room id. A token names the other user and the last room id of its
// page, so pages continue after it (keyset paging): tokens never expire,
// and rooms joined or left between pages shift nothing else. A user id
// that is well formed but names nobody gets an empty list, as the spec
// requires.
func (a *API) mutualRooms(r *http.Request, dev *userapi.Device) (any, error) {
	q := r.URL.Query()
	ids := q["user_id"]
	switch {
	case len(ids) == 0:
		return nil, mxhttp.MissingParam("The user_id parameter is required")
	case len(ids) > 1:
		return nil, mxhttp.InvalidParam("Duplicate user_id query parameter")
	}
	other := ids[0]
	if _, err := spec.NewUserID(other, true); err != nil {
		return nil, mxhttp.InvalidParam("The user ID provided was invalid")
	}
	if other == dev.UserID {
		return nil, mxhttp.InvalidParam("You cannot request a list of shared rooms with yourself")
	}
	after := ""
	if q.Has("from") {
		var ok bool
		if after, ok = parseMutualRoomsToken(q.Get("from"), other); !ok {
			return nil, mxhttp.InvalidParam("Invalid from token")
		}
	}
	ctx := r.Context()
	mine, err := a.rooms.RoomsWithMembership(ctx, dev.UserID, spec.Join)
	if err != nil {
		return nil, err
	}
	theirs, err := a.rooms.RoomsWithMembership(ctx, other, spec.Join)
	if err != nil {
		return nil, err
	}
	joined := make(map[string]bool, len(theirs))
	for _, id := range theirs {
		joined[id] = true
	}
	var mutual []string
	for _, id := range mine {
		if joined[id] {
			mutual = append(mutual, id)
		}
	}
	// Sorted here, byte-wise: the database's collation may order ids
	// differently, and tokens compare with Go's order.
	slices.Sort(mutual)
	resp := mutualRoomsResponse{Joined: []string{}, Count: len(mutual)}
	start, _ := slices.BinarySearch(mutual, after)
	if start < len(mutual) && mutual[start] == after {
		start++
	}
	end := min(start+mutualRoomsPage, len(mutual))
	resp.Joined = append(resp.Joined, mutual[start:end]...)
	if end < len(mutual) {
		resp.NextBatch = mutualRoomsToken(other, mutual[end-1])
	}
	return resp, nil
}

func mutualRoomsToken(other, last string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(other + "\x00" + last))
}

// parseMutualRoomsToken returns the room id a token continues after; not
// ok for tokens that are malformed or were made for another user.
func parseMutualRoomsToken(tok, other string) (string, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", false
	}
	user, last, ok := strings.Cut(string(raw), "\x00")
	if !ok || user != other || !isRoomID(last) {
		return "", false
	}
	return last, true
}
