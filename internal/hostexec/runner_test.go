package hostexec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"banger/internal/testutil"

	"golang.org/x/sys/unix"
)

// nobody is the unprivileged user the tests run commands as.
const nobody = 65534

func TestRealRunWithAsUser(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "sh", "id", "cat", "ls")
	ctx := context.Background()
	as := &Credential{UID: nobody, GID: nobody}

	// Who the command is: the uid and gid asked for, no supplementary
	// groups (root has some), no capabilities, a minimal environment.
	out, err := Real{}.RunWith(ctx, Options{As: as}, "sh", "-c", `id -u; id -g; id -G; grep -E '^Cap(Eff|Prm|Inh|Amb):' /proc/self/status; pwd; env | sort`)
	if err != nil {
		t.Fatalf("RunWith: %v", err)
	}
	want := "65534\n65534\n65534\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapAmb:\t0000000000000000\n/\nLC_ALL=C\nPATH=" + os.Getenv("PATH") + "\nPWD=/\n"
	if string(out) != want {
		t.Errorf("as nobody:\n%s\nwant:\n%s", out, want)
	}

	// An inherited file: readable through its descriptor when its mode
	// lets the user open it, and the same path of a root-only file is
	// refused, so the descriptor grants nothing the user's rights do not.
	dir := t.TempDir()
	mine := filepath.Join(dir, "mine")
	if err := os.WriteFile(mine, []byte("the user's disk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(mine, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	rootOnly := filepath.Join(dir, "root-only")
	if err := os.WriteFile(rootOnly, []byte("root's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(mine, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g, err := os.Open(rootOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	out, err = Real{}.RunWith(ctx, Options{As: as, ExtraFiles: []*os.File{f}}, "sh", "-c", "cat "+FDPath(0)+" && echo appended >> "+FDPath(0))
	if err != nil || string(out) != "the user's disk\n" {
		t.Errorf("read the inherited file: %q, %v", out, err)
	}
	if b, _ := os.ReadFile(mine); string(b) != "the user's disk\nappended\n" {
		t.Errorf("write through the inherited file: %q", b)
	}
	_, err = Real{}.RunWith(ctx, Options{As: as, ExtraFiles: []*os.File{g}}, "cat", FDPath(0))
	var ee *ExitError
	if !errors.As(err, &ee) || !strings.Contains(ee.Stderr, "Permission denied") {
		t.Errorf("open a root-only file through an inherited descriptor: %v", err)
	}
	if err == nil || !strings.Contains(err.Error(), "[as 65534:65534, fd 3="+rootOnly+"] cat /proc/self/fd/3") {
		t.Errorf("error does not say how the command ran: %v", err)
	}
	// Nothing else is inherited, even a descriptor this process got
	// from its parent without close-on-exec (made here with dup2).
	if err := unix.Dup2(int(g.Fd()), 100); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(100)
	out, err = Real{}.RunWith(ctx, Options{As: as, ExtraFiles: []*os.File{f}}, "ls", "/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out))
	sort.Strings(got)
	// ls itself holds descriptor 4 open on the directory it lists.
	if !reflect.DeepEqual(got, []string{"0", "1", "2", "3", "4"}) {
		t.Errorf("descriptors in the command: %q, want 0 to 3 and ls's own 4", got)
	}
}

func TestRealRunWithTimeout(t *testing.T) {
	testutil.RequireTools(t, "sleep")
	start := time.Now()
	_, err := Real{}.RunWith(context.Background(), Options{Timeout: 200 * time.Millisecond}, "sleep", "30")
	if err == nil || !strings.Contains(err.Error(), "killed after 200ms") {
		t.Errorf("RunWith of a command past its timeout: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the timeout took %s to fire", d)
	}
}

func TestFakeRunWith(t *testing.T) {
	file, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	file.WriteString("content")
	var seen []string
	f := &Fake{Handler: func(argv []string, _ string) (string, error) {
		seen = argv
		if argv[0] != "cat" {
			return "", nil
		}
		b, err := os.ReadFile(argv[1])
		return string(b), err
	}}
	out, err := f.RunWith(context.Background(), Options{As: &Credential{UID: 7, GID: 8}, ExtraFiles: []*os.File{file}}, "cat", FDPath(0))
	if err != nil || string(out) != "content" {
		t.Fatalf("RunWith: %q, %v (handler saw %q)", out, err, seen)
	}
	if got, want := f.Calls(), []string{"[as 7:8, fd 3=" + file.Name() + "] cat /proc/self/fd/3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("recorded %q, want %q", got, want)
	}
	// Without options the record is the bare command line.
	f.Reset()
	f.Run(context.Background(), "true")
	if got := f.Calls(); !reflect.DeepEqual(got, []string{"true"}) {
		t.Errorf("recorded %q", got)
	}
}
