package mxhttp

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// Handler is an HTTP handler that returns its error instead of writing it;
// ServeHTTP writes it, in the one place errors reach the wire.
type Handler func(w http.ResponseWriter, r *http.Request) error

func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h(w, r); err != nil {
		WriteError(w, r, err)
	}
}

// JSON returns a handler that answers 200 with the JSON of what f returns.
func JSON(f func(r *http.Request) (any, error)) Handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		v, err := f(r)
		if err != nil {
			return err
		}
		return WriteJSON(w, http.StatusOK, v)
	}
}

// WriteJSON writes v as a JSON response with status.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return Internal(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

// WriteError writes err as a Matrix error. An error that is not an *Error
// is an internal failure: the client gets 500 M_UNKNOWN and the log gets
// the cause.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var me *Error
	if !errors.As(err, &me) {
		me = Internal(err)
	}
	if me.Status >= 500 {
		loggerFrom(r.Context()).Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	body := make(map[string]any, len(me.Extra)+2)
	for k, v := range me.Extra {
		body[k] = v
	}
	// A user-interactive auth challenge is the one error body without an
	// errcode (spec: the 401 of UIA before any stage failed).
	if me.Code != "" {
		body["errcode"] = me.Code
		body["error"] = me.Message
	}
	if ms, ok := me.Extra["retry_after_ms"].(int64); ok {
		w.Header().Set("Retry-After", retryAfterHeader(ms))
	}
	_ = WriteJSON(w, me.Status, body)
}

// ReadJSON decodes the request body into v: M_NOT_JSON when it does not
// parse, M_BAD_JSON when it is not an object or a field has the wrong type,
// M_TOO_LARGE past the body limit.
func ReadJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return TooLarge("Request body is larger than %d bytes", tooBig.Limit)
		}
		return BadJSON("Could not read the request body")
	}
	return DecodeJSON(body, v)
}

// DecodeJSON is ReadJSON for a body already read.
func DecodeJSON(body []byte, v any) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return NotJSON("Request body is empty; expected a JSON object")
	}
	if !json.Valid(trimmed) {
		return NotJSON("Request body is not valid JSON")
	}
	if trimmed[0] != '{' {
		return BadJSON("Request body must be a JSON object")
	}
	if err := json.Unmarshal(trimmed, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return BadJSON("Field %q has the wrong type: expected %s", te.Field, te.Type)
		}
		return BadJSON("Request body has the wrong shape: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

type loggerKey struct{}

// WithLogger returns a context carrying the request logger.
func loggerFrom(ctx interface{ Value(any) any }) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.New(slog.DiscardHandler)
}
