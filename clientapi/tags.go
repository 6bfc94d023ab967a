package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Room tags (spec: Room Tagging) are the room account data m.tag,
// {"tags": {name: {order?}}}, so /sync delivers them with the rest of the
// room's account data.
const tagType = "m.tag"

// maxTagBytes is the spec's limit on a tag name.
const maxTagBytes = 255

func (a *API) tagRoutes(r *mux.Router) {
	handle(r, "/user/{userId}/rooms/{roomId}/tags", a.authedJSON(a.getTags), http.MethodGet)
	handle(r, "/user/{userId}/rooms/{roomId}/tags/{tag}", a.authedJSON(a.putTag), http.MethodPut)
	handle(r, "/user/{userId}/rooms/{roomId}/tags/{tag}", a.authedJSON(a.deleteTag), http.MethodDelete)
}

// tagsContent is the content of m.tag. Tags keep whatever object the
// client gave them (Synapse stores the whole body), and the content any
// other keys it had.
type tagsContent map[string]json.RawMessage

// tags returns the content's tags ({} when it has none or they are not
// an object).
func (c tagsContent) tags() map[string]json.RawMessage {
	var tags map[string]json.RawMessage
	if json.Unmarshal(c["tags"], &tags) != nil || tags == nil {
		tags = map[string]json.RawMessage{}
	}
	return tags
}

// getTags is GET /user/{userId}/rooms/{roomId}/tags: {"tags": {}} for a
// room the caller never tagged.
func (a *API) getTags(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, err := tagTarget(r, dev)
	if err != nil {
		return nil, err
	}
	raw, err := a.db.AccountDataContent(r.Context(), dev.Localpart, roomID, tagType)
	if err != nil && !errors.Is(err, sql.ErrNotFound) {
		return nil, err
	}
	var c tagsContent
	_ = json.Unmarshal(raw, &c)
	return map[string]any{"tags": c.tags()}, nil
}

// putTag is PUT /user/{userId}/rooms/{roomId}/tags/{tag}: adds or
// replaces a tag. The body is the tag's object; its order, when given,
// must be a number (400 M_BAD_JSON) between 0 and 1 (400
// M_INVALID_PARAM; spec: definitions/tag.yaml).
func (a *API) putTag(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, err := tagTarget(r, dev)
	if err != nil {
		return nil, err
	}
	tag, err := tagVar(r)
	if err != nil {
		return nil, err
	}
	body, err := readObjectBody(r)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, mxhttp.BadJSON("Request body must be a JSON object")
	}
	if raw, ok := fields["order"]; ok {
		var order float64
		if json.Unmarshal(raw, &order) != nil {
			return nil, mxhttp.BadJSON("order must be a number")
		}
		if order < 0 || order > 1 {
			return nil, mxhttp.InvalidParam("order must be between 0 and 1")
		}
		// Written back in Go's shortest form: 5e-01 reads as 0.5, as it
		// does from Synapse, which stores the parsed number.
		if fields["order"], err = json.Marshal(order); err != nil {
			return nil, err
		}
	}
	tagObject, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return a.updateTags(r, dev, roomID, func(tags map[string]json.RawMessage) bool {
		tags[tag] = tagObject
		return true
	})
}

// deleteTag is DELETE /user/{userId}/rooms/{roomId}/tags/{tag}; deleting
// a tag the room does not have is a success that changes nothing (as in
// Synapse).
func (a *API) deleteTag(r *http.Request, dev *userapi.Device) (any, error) {
	roomID, err := tagTarget(r, dev)
	if err != nil {
		return nil, err
	}
	tag, err := tagVar(r)
	if err != nil {
		return nil, err
	}
	return a.updateTags(r, dev, roomID, func(tags map[string]json.RawMessage) bool {
		if _, ok := tags[tag]; !ok {
			return false
		}
		delete(tags, tag)
		return true
	})
}

// updateTags applies change to the room's tags in one read-and-write of
// m.tag and wakes the caller's syncs when it changed them.
func (a *API) updateTags(r *http.Request, dev *userapi.Device, roomID string, change func(map[string]json.RawMessage) bool) (any, error) {
	pos, err := a.db.UpdateAccountData(r.Context(), dev.Localpart, roomID, tagType, func(_ *sql.Queries, old []byte) ([]byte, error) {
		var c tagsContent
		if json.Unmarshal(old, &c) != nil || c == nil {
			c = tagsContent{}
		}
		tags := c.tags()
		if !change(tags) {
			return nil, nil
		}
		raw, err := json.Marshal(tags)
		if err != nil {
			return nil, err
		}
		c["tags"] = raw
		return json.Marshal(c)
	})
	if err != nil {
		return nil, err
	}
	if pos != 0 {
		a.wake.Users(dev.UserID)
	}
	return struct{}{}, nil
}

// tagTarget checks the path of a tag endpoint: the caller's own user id
// (403 M_FORBIDDEN otherwise; guests 403 M_GUEST_ACCESS_FORBIDDEN, as
// the spec's guest endpoints leave tags out) and a room id (400
// M_INVALID_PARAM). The caller need not be in the room, as in Synapse.
func tagTarget(r *http.Request, dev *userapi.Device) (string, error) {
	userID, err := pathVar(r, "userId")
	if err != nil {
		return "", err
	}
	if userID != dev.UserID {
		return "", mxhttp.Forbidden("Cannot access the tags of other users")
	}
	if err := forbidGuest(dev); err != nil {
		return "", err
	}
	return roomIDPath(r)
}

// tagVar is the {tag} path variable: not empty, at most maxTagBytes bytes
// (spec: "The name of a tag MUST NOT exceed 255 bytes").
func tagVar(r *http.Request) (string, error) {
	tag, err := pathVar(r, "tag")
	if err != nil {
		return "", err
	}
	if tag == "" || strings.ContainsRune(tag, 0) {
		return "", mxhttp.InvalidParam("Bad tag name")
	}
	if len(tag) > maxTagBytes {
		return "", mxhttp.InvalidParam("Tag names are at most %d bytes", maxTagBytes)
	}
	return tag, nil
}
