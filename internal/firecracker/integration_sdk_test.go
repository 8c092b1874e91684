package firecracker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/testutil"
)

// sdkRequest is one request as Firecracker's Go SDK or firectl sends it:
// the bodies below are the ones their defaults produce (read from their
// sources), not banger's.
type sdkRequest struct {
	method, path string
	body         string
}

// send sends r through c (so the spec still checks it).
func (r sdkRequest) send(ctx context.Context, c *Client) error {
	var body any
	if r.body != "" {
		body = json.RawMessage(r.body)
	}
	return c.do(ctx, r.method, r.path, body, nil)
}

// TestVMMFirecrackerClientSequence drives banger-vmm-qemu the way a
// third-party Firecracker client does with its default options: the SDK's
// default command line (--no-seccomp), its socket wait (GET
// /machine-config), logger and metrics on FIFOs nobody reads, firectl's
// smt:true, a root drive by path; then pause, snapshot with the SDK's
// body, resume, and a load with the SDK's body (the deprecated
// mem_file_path and enable_diff_snapshots) in a new VMM.
func TestVMMFirecrackerClientSequence(t *testing.T) {
	kernel := requireVMHost(t)
	testutil.Slow(t)
	dir := t.TempDir()
	initrd := buildTickerInitramfs(t, dir)
	root := filepath.Join(dir, "root.img")
	writeFile(t, root, make([]byte, 1<<20), 0o644)
	logFIFO, metricsFIFO := filepath.Join(dir, "fc.log.fifo"), filepath.Join(dir, "fc.metrics.fifo")
	for _, p := range []string{logFIFO, metricsFIFO} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	launch := func(name string) (*Process, *Client, string) {
		console := filepath.Join(dir, name+".log")
		sock := filepath.Join(dir, name+".sock")
		p, err := Launch(LaunchConfig{Bin: vmmBinary(t), APISock: sock, ID: "sdk-" + name, LogPath: console, ExtraArgs: []string{"--no-seccomp"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if Alive(p.PID) {
				unix.Kill(p.PID, unix.SIGKILL)
			}
			<-p.Done()
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.WaitAPI(ctx, sock); err != nil {
			t.Fatalf("%v\n%s", err, readTail(console))
		}
		return p, newCheckedClient(t, sock), console
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	run := func(c *Client, console string, reqs ...sdkRequest) {
		t.Helper()
		for _, r := range reqs {
			if err := r.send(ctx, c); err != nil {
				t.Fatalf("%s %s: %v\n%s", r.method, r.path, err, readTail(console))
			}
		}
	}
	state, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	pA, c, consoleA := launch("a")
	run(c, consoleA,
		sdkRequest{"GET", "/machine-config", ""},
		sdkRequest{"PUT", "/logger", fmt.Sprintf(`{"level":"Debug","log_path":%q,"show_level":true,"show_log_origin":false}`, logFIFO)},
		sdkRequest{"PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metricsFIFO)},
		sdkRequest{"PUT", "/machine-config", `{"mem_size_mib":256,"smt":true,"track_dirty_pages":false,"vcpu_count":2}`},
		sdkRequest{"PUT", "/boot-source", fmt.Sprintf(`{"boot_args":"console=ttyS0 reboot=k panic=1 pci=off","initrd_path":%q,"kernel_image_path":%q}`, initrd, kernel)},
		sdkRequest{"PUT", "/drives/1", fmt.Sprintf(`{"drive_id":"1","is_read_only":false,"is_root_device":true,"path_on_host":%q}`, root)},
		sdkRequest{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	)
	waitTick(ctx, t, consoleA, 1)
	if code, _ := apiStatus(ctx, c, "GET", "/"); code != http.StatusOK {
		t.Fatalf("GET / after boot with a FIFO logger: %d", code)
	}
	run(c, consoleA,
		sdkRequest{"PATCH", "/vm", `{"state":"Paused"}`},
		sdkRequest{"PUT", "/snapshot/create", fmt.Sprintf(`{"mem_file_path":%q,"snapshot_path":%q}`, mem, state)},
	)
	saved, _, _, _ := lastTick(consoleA)
	run(c, consoleA, sdkRequest{"PATCH", "/vm", `{"state":"Resumed"}`})
	waitTick(ctx, t, consoleA, saved)
	unix.Kill(pA.PID, unix.SIGKILL)
	<-pA.Done()

	_, cb, consoleB := launch("b")
	run(cb, consoleB,
		sdkRequest{"GET", "/machine-config", ""},
		sdkRequest{"PUT", "/snapshot/load", fmt.Sprintf(`{"enable_diff_snapshots":false,"mem_file_path":%q,"resume_vm":true,"snapshot_path":%q}`, mem, state)},
	)
	n, file, sleeper := waitTick(ctx, t, consoleB, -1)
	if n < saved || n > saved+3 || file != "kept-across-snapshots" || sleeper != "yes" {
		t.Errorf("restored guest: tick %d (the snapshot was taken after %d), file %q, sleeper %q", n, saved, file, sleeper)
	}
	var mc map[string]any
	if err := cb.do(ctx, "GET", "/machine-config", nil, &mc); err != nil || mc["vcpu_count"] != 2.0 || mc["mem_size_mib"] != 256.0 {
		t.Errorf("GET /machine-config after the load: %v, %v", mc, err)
	}
	if _, err := os.Stat(mem); err != nil {
		t.Error(err)
	}
}

// apiStatus returns the status of one request.
func apiStatus(ctx context.Context, c *Client, method, path string) (int, error) {
	err := c.do(ctx, method, path, nil, nil)
	if err == nil {
		return http.StatusOK, nil
	}
	if ae, ok := err.(*APIError); ok {
		return ae.Status, nil
	}
	return 0, err
}
