package image

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// progressInterval is how often a long step reports that it is still
// running.
const progressInterval = 15 * time.Second

// reporter sends progress for one build: every message carries the time
// since the build started, and long steps report periodically. Calls to
// the progress function never overlap, although the periodic ones come
// from another goroutine.
type reporter struct {
	fn     func(step, msg string)
	logger *slog.Logger
	start  time.Time
	mu     sync.Mutex
}

func newReporter(fn func(step, msg string), logger *slog.Logger) *reporter {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &reporter{fn: fn, logger: logger, start: time.Now()}
}

// report sends one progress message for step.
func (r *reporter) report(step, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	msg = fmt.Sprintf("%s [%s]", msg, formatElapsed(time.Since(r.start)))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logger.Info("build progress", "step", step, "msg", msg)
	if r.fn != nil {
		r.fn(step, msg)
	}
}

// every calls status every interval and reports its answer under step,
// until the returned stop function is called. stop waits for the reporting
// goroutine to end.
func (r *reporter) every(step string, interval time.Duration, status func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				r.report(step, "%s", status())
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

// formatElapsed prints a duration as the build's clock: "42s", "3m05s".
func formatElapsed(d time.Duration) string {
	d = d.Round(time.Second)
	if d < time.Minute {
		return fmt.Sprintf("%ds", int(d.Seconds()))
	}
	return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
}

// logCounter counts the lines of a growing log file that start with a
// prefix, reading only what was appended since the last call.
type logCounter struct {
	path   string
	prefix []byte
	offset int64
	count  int
	last   string
	carry  []byte
}

// update reads the new part of the log and returns the number of matching
// lines so far and the last non-empty line.
func (c *logCounter) update() (int, string) {
	f, err := os.Open(c.path)
	if err != nil {
		return c.count, c.last
	}
	defer f.Close()
	if _, err := f.Seek(c.offset, io.SeekStart); err != nil {
		return c.count, c.last
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return c.count, c.last
	}
	c.offset += int64(len(data))
	data = append(c.carry, data...)
	lines := bytes.Split(data, []byte("\n"))
	// The last element is an unfinished line (or empty); keep it for later.
	c.carry = append([]byte(nil), lines[len(lines)-1]...)
	for _, l := range lines[:len(lines)-1] {
		if len(c.prefix) > 0 && bytes.HasPrefix(l, c.prefix) {
			c.count++
		}
		if t := bytes.TrimSpace(l); len(t) > 0 {
			c.last = string(t)
		}
	}
	return c.count, c.last
}

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
