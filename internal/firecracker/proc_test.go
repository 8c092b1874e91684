package firecracker

import (
	"os"
	"path/filepath"
	"testing"

	"banger/internal/model"
	procfs "banger/internal/proc"
)

// fakeProc is a fake /proc: pid -> argv and state letter.
type fakeProc map[int]struct {
	argv  []string
	state string
}

func (f fakeProc) write(t *testing.T) procfs.Reader {
	t.Helper()
	root := t.TempDir()
	for pid, p := range f {
		if err := procfs.WriteFake(root, procfs.Process{PID: pid, PPID: 1, State: p.state[0], Argv: p.argv}, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Entries that are not processes are skipped.
	os.MkdirAll(filepath.Join(root, "sys"), 0o755)
	os.WriteFile(filepath.Join(root, "uptime"), []byte("1 1"), 0o644)
	return procfs.Reader{Root: root}
}

func TestFindPID(t *testing.T) {
	const sock = "/run/banger/vms/ab12/fc.sock"
	procs := fakeProc{
		1:   {[]string{"/sbin/init"}, "S"},
		100: {[]string{"/usr/bin/banger-vmm-qemu", "--api-sock", sock, "--id", "ab12"}, "S"},
		// QEMU, the child of banger-vmm-qemu: its QMP socket is next to
		// the API socket, so its argv contains the path as a substring.
		101: {[]string{"qemu-system-x86_64", "-qmp", "unix:" + sock + ".qmp,server=on,wait=off", "-name", "--api-sock"}, "S"},
		// Another VM whose socket path has ours as a prefix.
		200: {[]string{"firecracker", "--api-sock", sock + "2", "--id", "x"}, "R"},
		// A dead VMM of the same socket, not yet reaped.
		300: {nil, "Z"},
		// A kernel thread: empty cmdline.
		2: {nil, "S"},
	}
	root := procs.write(t)
	tests := []struct {
		sock    string
		want    int
		wantErr string
	}{
		{sock, 100, ""},
		{sock + "2", 200, ""},
		{"/run/banger/vms/other/fc.sock", 0, model.ENOTFOUND},
		{sock + ".qmp", 0, model.ENOTFOUND},
		{"/run/banger/vms/ab12", 0, model.ENOTFOUND},
	}
	for _, tt := range tests {
		got, err := findPID(root, tt.sock)
		if got != tt.want || model.ErrorCode(err) != tt.wantErr {
			t.Errorf("findPID(%q): got %d, %v; want %d, %q", tt.sock, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestFindPIDSkipsZombieAndFindsEqualsForm(t *testing.T) {
	const sock = "/s/fc.sock"
	root := fakeProc{
		10: {[]string{"firecracker", "--api-sock", sock}, "Z"},
		11: {[]string{"firecracker", "--api-sock=" + sock}, "S"},
	}.write(t)
	got, err := findPID(root, sock)
	if err != nil || got != 11 {
		t.Errorf("got %d, %v; want 11", got, err)
	}
}

func TestFindPIDTwoClaimants(t *testing.T) {
	const sock = "/s/fc.sock"
	root := fakeProc{
		10: {[]string{"firecracker", "--api-sock", sock}, "S"},
		11: {[]string{"firecracker", "--api-sock", sock}, "S"},
	}.write(t)
	_, err := findPID(root, sock)
	if model.ErrorCode(err) != model.ECONFLICT {
		t.Errorf("got %v, want ECONFLICT", err)
	}
}

func TestAliveSelf(t *testing.T) {
	if !Alive(os.Getpid()) {
		t.Error("Alive(self) = false")
	}
	if Alive(0) || Alive(-1) {
		t.Error("Alive of a non-pid = true")
	}
}
