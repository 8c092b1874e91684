// Package testutil holds the helpers that decide whether an integration
// or end-to-end test can run here. Run by hand without root or a tool, a
// test skips and says why; under BANGER_CI=1 (set by scripts/test.sh) a
// missing requirement fails the test instead, so nothing skips silently in
// CI.
package testutil

import (
	"os"
	"os/exec"
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
