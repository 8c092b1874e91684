package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// A lifecycle operation (start, stop, kill, cleanup, delete) is a list of
// named steps. Each step has a Do and, where something must be undone if
// a later step fails, an Undo. One runner runs them: it logs each step's
// duration, calls the step's crash point (its name) once the step is done,
// and on a failure undoes the done steps in reverse order. A step's name
// is "<op>:<what>"; the end-to-end fault matrix kills the daemon at every
// one of them, taking the names from LifecycleSteps, so a step added
// later is covered without editing the test.

// step is one named step of an operation on state S.
type step[S any] struct {
	Name string
	Do   func(ctx context.Context, s *S) error
	// Undo reverses Do when a later step fails; nil when there is
	// nothing to reverse.
	Undo func(ctx context.Context, s *S)
}

// stepMode says what the runner does when a step fails.
type stepMode int

const (
	// undoOnError stops at the first failure and undoes what was done.
	undoOnError stepMode = iota
	// continueOnError runs every step and returns all the errors
	// (cleanup: each step frees something independent of the others).
	continueOnError
)

// stepRunner runs step lists: the daemon's logger and crash hook, and the
// record of step durations the start benchmark reads back.
type stepRunner struct {
	log   *slog.Logger
	crash func(name string)
	times *stepTimes
}

// runSteps runs steps on s. The context given to Undo is not cancelled
// with ctx: an undo must finish.
func runSteps[S any](ctx context.Context, r stepRunner, mode stepMode, steps []step[S], s *S) error {
	var done []step[S]
	var errs []error
	for _, st := range steps {
		start := time.Now()
		err := st.Do(ctx, s)
		took := time.Since(start)
		r.times.add(st.Name, took)
		if err != nil {
			r.log.Warn("step failed", "step", st.Name, "took_ms", ms(took), "err", err)
			if mode == undoOnError {
				uctx := context.WithoutCancel(ctx)
				for i := len(done) - 1; i >= 0; i-- {
					if u := done[i].Undo; u != nil {
						r.log.Info("undo", "step", done[i].Name)
						u(uctx, s)
					}
				}
				return err
			}
			errs = append(errs, err)
		} else {
			r.log.Debug("step", "step", st.Name, "took_ms", ms(took))
			done = append(done, st)
		}
		r.crash(st.Name)
	}
	return errors.Join(errs...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// stepTimes keeps the last durations of each step, for the start
// benchmark (GET /v1/debug/steps) and the logs.
type stepTimes struct {
	mu sync.Mutex
	m  map[string][]time.Duration
}

// maxStepSamples bounds the durations kept per step.
const maxStepSamples = 1000

func (t *stepTimes) add(name string, d time.Duration) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string][]time.Duration{}
	}
	s := append(t.m[name], d)
	if len(s) > maxStepSamples {
		s = s[len(s)-maxStepSamples:]
	}
	t.m[name] = s
}

// stepNames lists the names of steps.
func stepNames[S any](steps []step[S]) []string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = s.Name
	}
	return out
}
