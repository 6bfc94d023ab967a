// Package mxhttp is Weft's HTTP layer: the one Matrix error type and the one
// place that writes it, JSON bodies, the router and the middleware shared by
// the client and federation listeners.
package mxhttp

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error is a Matrix error: the errcode and status of the spec, a message
// for the client, optional extra response fields, and the cause, which is
// logged but never sent.
type Error struct {
	Status  int
	Code    string
	Message string
	Extra   map[string]any
	Cause   error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s (%d): %s: %v", e.Code, e.Status, e.Message, e.Cause)
	}
	return fmt.Sprintf("%s (%d): %s", e.Code, e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Cause }

// With returns a copy of e carrying an extra response field.
func (e *Error) With(key string, value any) *Error {
	c := *e
	c.Extra = make(map[string]any, len(e.Extra)+1)
	for k, v := range e.Extra {
		c.Extra[k] = v
	}
	c.Extra[key] = value
	return &c
}

// Errorf makes an Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// The errors the spec names most often.

// Forbidden is 403 M_FORBIDDEN.
func Forbidden(format string, args ...any) *Error {
	return Errorf(http.StatusForbidden, "M_FORBIDDEN", format, args...)
}

// NotFound is 404 M_NOT_FOUND.
func NotFound(format string, args ...any) *Error {
	return Errorf(http.StatusNotFound, "M_NOT_FOUND", format, args...)
}

// BadJSON is 400 M_BAD_JSON: valid JSON of the wrong shape.
func BadJSON(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, "M_BAD_JSON", format, args...)
}

// NotJSON is 400 M_NOT_JSON: a body that does not parse.
func NotJSON(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, "M_NOT_JSON", format, args...)
}

// InvalidParam is 400 M_INVALID_PARAM.
func InvalidParam(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", format, args...)
}

// MissingParam is 400 M_MISSING_PARAM.
func MissingParam(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, "M_MISSING_PARAM", format, args...)
}

// Unrecognized is 404 M_UNRECOGNIZED: an endpoint Weft does not serve.
func Unrecognized() *Error {
	return Errorf(http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
}

// MethodNotAllowed is 405 M_UNRECOGNIZED: a known endpoint, the wrong method.
func MethodNotAllowed() *Error {
	return Errorf(http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Method not allowed on this endpoint")
}

// TooLarge is 413 M_TOO_LARGE.
func TooLarge(format string, args ...any) *Error {
	return Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", format, args...)
}

// MissingToken is 401 M_MISSING_TOKEN.
func MissingToken() *Error {
	return Errorf(http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token")
}

// UnknownToken is 401 M_UNKNOWN_TOKEN; softLogout tells the client that it
// may log in again and keep its device (an expired token).
func UnknownToken(softLogout bool) *Error {
	e := Errorf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown or expired access token")
	if softLogout {
		return e.With("soft_logout", true)
	}
	return e
}

// LimitExceeded is 429 M_LIMIT_EXCEEDED; the Retry-After header is written
// from retry_after_ms.
func LimitExceeded(retryAfter time.Duration) *Error {
	return Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many requests").
		With("retry_after_ms", retryAfter.Milliseconds())
}

// Internal is 500 M_UNKNOWN carrying the cause for the log.
func Internal(cause error) *Error {
	return &Error{Status: http.StatusInternalServerError, Code: "M_UNKNOWN", Message: "Internal server error", Cause: cause}
}

func retryAfterHeader(ms int64) string {
	return strconv.FormatInt((ms+999)/1000, 10)
}
