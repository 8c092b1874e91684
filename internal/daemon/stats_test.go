package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLastJSONLineHostile feeds the metrics reader what a VMM a guest
// took over could leave in its metrics file.
func TestLastJSONLineHostile(t *testing.T) {
	dir := t.TempDir()
	good := `{"block_rootfs":{"read_bytes":4096},"net_eth0":{"tx_bytes_count":100}}`
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		name, content string
		ok            bool
	}{
		{name: "plain", content: "{\"x\":1}\n" + good + "\n", ok: true},
		{name: "a huge last line is skipped", content: good + "\n{\"pad\":\"" + strings.Repeat("x", 100<<10) + "\"}\n", ok: true},
		{name: "garbage after", content: good + "\n{not json}\n\x1b[2J\n", ok: true},
		{name: "only garbage", content: "{{{{\n}}}}\n"},
		{name: "a 10 MiB file of one line", content: "{\"pad\":\"" + strings.Repeat("x", 10<<20) + "\"}\n"},
		{name: "good line before a tail of 10 MiB", content: good + "\n" + strings.Repeat("noise\n", 2<<20)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := lastJSONLine(write(strings.ReplaceAll(tt.name, " ", "-"), tt.content), 0)
			if !tt.ok {
				if err == nil {
					t.Errorf("lastJSONLine = %v, want an error", m)
				}
				return
			}
			if err != nil {
				t.Fatalf("lastJSONLine: %v", err)
			}
			if got, _ := json.Marshal(m); string(got) != good {
				t.Errorf("lastJSONLine = %s, want %s", got, good)
			}
		})
	}

	// A FIFO in the file's place must not block the poller, a symlink
	// must not be followed (to a file the VMM could not read itself).
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := lastJSONLine(fifo, 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("lastJSONLine of a FIFO: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lastJSONLine blocked on a FIFO")
	}
	target := write("secret", good+"\n")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if m, err := lastJSONLine(link, 0); err == nil {
		t.Errorf("lastJSONLine followed a symlink: %v", m)
	}
}

func TestIOBytesChecksNumbers(t *testing.T) {
	for _, tt := range []struct {
		line string
		want int64
	}{
		{`{"block_rootfs":{"read_bytes":4096,"write_bytes":1},"net_eth0":{"rx_bytes_count":10,"tx_bytes_count":5}}`, 4112},
		{`{"block_rootfs":{"read_bytes":-100000}}`, 0},
		{`{"block_rootfs":{"read_bytes":1e300}}`, 0},
		{`{"block_rootfs":{"read_bytes":1.5}}`, 0},
		{`{"block_rootfs":{"read_bytes":"4096"}}`, 0},
		{`{"block_rootfs":[1,2,3],"net_eth0":7}`, 0},
		{`{"other":{"read_bytes":4096}}`, 0},
		{`{"block_a":{"read_bytes":1e15},"block_b":{"read_bytes":1e15},"block_c":{"read_bytes":1e15}}`, 1 << 50},
	} {
		var m map[string]any
		if err := json.Unmarshal([]byte(tt.line), &m); err != nil {
			t.Fatal(err)
		}
		if got := ioBytes(m); got != tt.want {
			t.Errorf("ioBytes(%s) = %d, want %d", tt.line, got, tt.want)
		}
	}
}
