// Package buildinfo says which build of banger is running. The build
// script sets Version and Commit with -ldflags -X.
package buildinfo

import (
	"runtime"

	"banger/internal/api"
)

// Set at link time by scripts/build.sh.
var (
	Version = "0.1.0-dev"
	Commit  = ""
)

// Info returns this build's version information.
func Info() api.VersionInfo {
	return api.VersionInfo{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
}
