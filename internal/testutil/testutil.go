// Package testutil holds the helpers that decide whether an integration
// or end-to-end test can run here. Run by hand without root or a tool, a
// test skips and says why; under BANGER_CI=1 (set by scripts/test.sh) a
// missing requirement fails the test instead, so nothing skips silently in
// CI.
package testutil

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// Tier is the test tier scripts/test.sh is running: "unit",
// "integration" or "e2e"; "" when run by hand.
func Tier() string { return os.Getenv("BANGER_TIER") }

// Integration marks a test of the integration (or end-to-end) tier: in
// the unit tier it skips, because scripts/test.sh runs it in the next one.
func Integration(t testing.TB) {
	t.Helper()
	if Tier() == "unit" {
		t.Skip("integration tier: runs in scripts/test.sh's integration pass")
	}
}

// CI reports whether missing requirements must fail rather than skip.
func CI() bool { return os.Getenv("BANGER_CI") == "1" }

// Unmet skips the test, or fails it under BANGER_CI=1.
func Unmet(t testing.TB, format string, args ...any) {
	t.Helper()
	if CI() {
		t.Fatalf("requirement not met under BANGER_CI=1: "+format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// RequireRoot needs euid 0.
func RequireRoot(t testing.TB) {
	t.Helper()
	Integration(t)
	if os.Geteuid() != 0 {
		Unmet(t, "needs root (run scripts/test.sh as root)")
	}
}

// RequireTools needs every named command on PATH.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	Integration(t)
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Unmet(t, "needs %s on PATH (scripts/deps.sh installs it)", n)
		}
	}
}

// RequireEnvFile needs an environment variable naming an existing file and
// returns it.
func RequireEnvFile(t testing.TB, name, why string) string {
	t.Helper()
	Integration(t)
	p := os.Getenv(name)
	if p == "" {
		Unmet(t, "set %s to %s (scripts/test.sh does)", name, why)
		return ""
	}
	if _, err := os.Stat(p); err != nil {
		Unmet(t, "%s=%s: %v", name, p, err)
	}
	return p
}

// Slow skips under -short.
func Slow(t testing.TB) {
	t.Helper()
	if testing.Short() && !CI() {
		t.Skip("skipping slow test under -short")
	}
}

// Heavy marks a test that costs minutes of both cores (a kernel
// compile): it runs in scripts/test.sh's tiers (BANGER_TIER set) or when
// asked with BANGER_HEAVY=1, never from a bare `go test ./...`.
func Heavy(t testing.TB) {
	t.Helper()
	if Tier() == "" && os.Getenv("BANGER_HEAVY") != "1" {
		t.Skip("heavy (a kernel compile): runs in scripts/test.sh, or set BANGER_HEAVY=1")
	}
}

// EnvAsNobody marks a test binary re-run by RerunAsNobody.
const EnvAsNobody = "BANGER_TEST_AS_NOBODY"

// RerunAsNobody lets a test that checks what an unprivileged user cannot
// do run as root too: as root it re-runs just this test in a copy of the
// test binary as uid/gid 65534, reports that run's result, and returns
// true (the caller returns). Otherwise it returns false and the test
// carries on as the user it runs as.
func RerunAsNobody(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 || os.Getenv(EnvAsNobody) == "1" {
		return false
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "banger-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := dir + "/test.bin"
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), EnvAsNobody+"=1", "HOME="+dir, "TMPDIR=/tmp")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("re-ran as uid 65534:\n%s", out)
	if err != nil {
		t.Fatalf("as uid 65534: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("as uid 65534 the test did not pass")
	}
	return true
}
