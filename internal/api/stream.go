package api

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// Event is one line of a streamed response (application/x-ndjson): zero
// or more progress events, then exactly one result or error.
type Event struct {
	Type      string          `json:"type"` // "progress", "result" or "error"
	ElapsedMS int64           `json:"elapsed_ms"`
	Progress  *Progress       `json:"progress,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *ErrorDetail    `json:"error,omitempty"`
}

// Event types.
const (
	EventProgress = "progress"
	EventResult   = "result"
	EventError    = "error"
)

// stream runs op, streaming its progress as NDJSON and ending with its
// result or error. Validation errors that happen before the first
// progress event still arrive as an error event with the right code; the
// HTTP status is 200 once streaming has begun.
func stream(w http.ResponseWriter, r *http.Request, op func(context.Context, ProgressFunc) (any, error)) {
	start := time.Now()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	send := func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		ev.ElapsedMS = time.Since(start).Milliseconds()
		// A client that went away is not an error for the operation.
		_ = enc.Encode(ev)
		if flusher != nil {
			flusher.Flush()
		}
	}
	result, err := op(r.Context(), func(p Progress) {
		send(Event{Type: EventProgress, Progress: &p})
	})
	if err != nil {
		d := detailFor(err)
		send(Event{Type: EventError, Error: &d})
		return
	}
	raw, merr := json.Marshal(result)
	if merr != nil {
		d := detailFor(merr)
		send(Event{Type: EventError, Error: &d})
		return
	}
	send(Event{Type: EventResult, Result: raw})
}
