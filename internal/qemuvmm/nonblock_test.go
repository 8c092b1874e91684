package qemuvmm

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFIFOLoggerAndMetricsNeverBlock configures the logger and metrics on
// FIFOs nobody reads, as the Go SDK and firectl do: both PUTs answer at
// once, the API keeps answering while far more than a pipe's worth of
// log lines is written, and a reader that comes later gets lines.
func TestFIFOLoggerAndMetricsNeverBlock(t *testing.T) {
	h := newHarness(t, nil)
	logFIFO := filepath.Join(h.dir, "log.fifo")
	metricsFIFO := filepath.Join(h.dir, "metrics.fifo")
	for _, p := range []string{logFIFO, metricsFIFO} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ok("PUT", "/logger", fmt.Sprintf(`{"log_path":%q,"level":"Debug","show_level":true}`, logFIFO))
		h.ok("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metricsFIFO))
		for i := 0; i < 5000; i++ {
			h.v.logger().Info("filling the pipe", "line", i, "pad", strings.Repeat("x", 64))
		}
		if code, _ := h.do("GET", "/", ""); code != 200 {
			t.Errorf("GET / answered %d", code)
		}
		h.configure()
		h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
		for i := 0; i < 2000; i++ {
			h.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the API blocked on a FIFO without a reader")
	}
	if h.v.logFile.missed.Load() == 0 || h.v.metricsFile.missed.Load() == 0 {
		t.Errorf("no write was dropped (log %d, metrics %d): the pipes never filled?", h.v.logFile.missed.Load(), h.v.metricsFile.missed.Load())
	}
	// A reader attached now gets what fitted in the pipe.
	r, err := os.OpenFile(logFIFO, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 4096)
	n, _ := io.ReadAtLeast(r, buf, 100)
	if !strings.Contains(string(buf[:n]), "filling the pipe") {
		t.Errorf("reader got %q", buf[:n])
	}
}

func TestNonblockFileRegular(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmm.log")
	os.WriteFile(p, []byte("earlier\n"), 0o640)
	f, err := openNonblock(p, true)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(f, "later\n")
	f.Close()
	if _, err := io.WriteString(f, "after close\n"); err == nil {
		t.Error("a write after Close succeeded")
	}
	if raw, _ := os.ReadFile(p); string(raw) != "earlier\nlater\n" {
		t.Errorf("log file %q", raw)
	}
}
