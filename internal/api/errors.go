package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"banger/internal/model"
)

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail carries a domain error code and a message for the user.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// StatusFor maps a domain error code to an HTTP status.
func StatusFor(code string) int {
	switch code {
	case model.ENOTFOUND:
		return http.StatusNotFound
	case model.ECONFLICT:
		return http.StatusConflict
	case model.EINVALID:
		return http.StatusBadRequest
	case model.EFORBIDDEN:
		return http.StatusForbidden
	case model.EUNAVAILABLE:
		return http.StatusServiceUnavailable
	case model.ELIMIT:
		return http.StatusTooManyRequests
	default:
		return http.StatusInternalServerError
	}
}

// CodeFor maps an HTTP status back to a domain error code, for bodies that
// carry none.
func CodeFor(status int) string {
	switch status {
	case http.StatusNotFound:
		return model.ENOTFOUND
	case http.StatusConflict:
		return model.ECONFLICT
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusMethodNotAllowed:
		return model.EINVALID
	case http.StatusForbidden:
		return model.EFORBIDDEN
	case http.StatusServiceUnavailable:
		return model.EUNAVAILABLE
	case http.StatusTooManyRequests:
		return model.ELIMIT
	default:
		return model.EINTERNAL
	}
}

// detailFor renders err for the wire.
func detailFor(err error) ErrorDetail {
	code := model.ErrorCode(err)
	return ErrorDetail{Code: code, Message: err.Error()}
}

// writeError writes err as a JSON error response.
func writeError(w http.ResponseWriter, err error) {
	d := detailFor(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(StatusFor(d.Code))
	json.NewEncoder(w).Encode(ErrorBody{Error: d})
}

// errorFromBody rebuilds a domain error from a response.
func errorFromBody(status int, body []byte) error {
	var eb ErrorBody
	if err := json.Unmarshal(body, &eb); err == nil && eb.Error.Message != "" {
		code := eb.Error.Code
		if code == "" {
			code = CodeFor(status)
		}
		return &model.Error{Code: code, Message: eb.Error.Message}
	}
	msg := string(body)
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &model.Error{Code: CodeFor(status), Message: msg, Err: errors.New(msg)}
}
