package hostexec

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// execAllowed are the only files outside tests that may import os/exec:
// each must start processes itself, in a way a runner cannot. Everything
// else runs commands through a Runner, so unit tests see and fake every
// command, and commands run as another user go through Options.As.
var execAllowed = map[string]string{
	"internal/hostexec/runner.go":    "the runner itself",
	"internal/firecracker/launch.go": "the VMM outlives the daemon: detached, in its own session, as the VM's uid",
	"internal/qemuvmm/machine.go":    "banger-vmm-qemu runs QEMU, tied to its own thread by PDEATHSIG",
	"internal/qemuvmm/probe.go":      "banger-vmm-qemu's accelerator probe guest",
	"internal/qemuvmm/accelcache.go": "banger-vmm-qemu resolves the QEMU binary",
	"internal/image/run.go":          "long builds (debootstrap, make): process groups, log files, namespaces",
	"internal/cli/access.go":         "the user's own ssh client on the user's terminal",
	"internal/cli/dockerfile.go":     "the user's own container builder (buildah or podman), as the user",
	"internal/testutil/testutil.go":  "test helpers",
	"test/harness/harness.go":        "the test harness runs bangerd and banger",
	"test/harness/netns.go":          "the test harness makes network namespaces",
	"test/harness/e2e.go":            "the test harness observes the host",
	"test/harness/users.go":          "the test harness adds users and groups to the host",
}

// TestExecOnlyWhereAllowed fails when os/exec is imported outside the
// places that must launch processes themselves.
func TestExecOnlyWhereAllowed(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n != "." && (strings.HasPrefix(n, ".") || n == "bin" || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == "os/exec" {
				if _, ok := execAllowed[rel]; !ok {
					bad = append(bad, rel)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("os/exec imported outside the places that must launch processes themselves:\n  %s\nrun commands through a hostexec.Runner (RunWith for another user, inherited files, a timeout), or, if the file really must start a process itself, add it to execAllowed with the reason", strings.Join(bad, "\n  "))
	}
	for f := range execAllowed {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("execAllowed names %s, which is gone: remove it", f)
		}
	}
}
