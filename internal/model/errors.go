package model

import (
	"errors"
	"fmt"
)

// Domain error codes. The API maps them to HTTP statuses and back, so a
// caller on either side of the socket can test them with ErrorCode.
const (
	ENOTFOUND = "ENOTFOUND"
	ECONFLICT = "ECONFLICT"
	EINVALID  = "EINVALID"
	EINTERNAL = "EINTERNAL"
	// EFORBIDDEN is returned when a caller touches what it does not own.
	EFORBIDDEN = "EFORBIDDEN"
	// EUNAVAILABLE is returned when the host lacks something the request
	// needs (a tool, a kernel feature).
	EUNAVAILABLE = "EUNAVAILABLE"
	// ELIMIT is returned when a per-user limit is reached; the message
	// names the limit and its configuration key.
	ELIMIT = "ELIMIT"
)

// Error is a domain error: a code and a message meant for the user.
type Error struct {
	Code    string
	Message string
	// Err is the underlying cause, if any; it is not shown to API callers.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil && e.Message == "" {
		return e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns a domain error with the given code.
func Errorf(code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), Err: errors.Unwrap(err)}
}

// ErrorCode returns the code of the first domain error in err's chain, or
// EINTERNAL for any other non-nil error, or "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}
