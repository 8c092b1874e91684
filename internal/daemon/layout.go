package daemon

import (
	"path/filepath"

	"banger/internal/model"
)

// layout names every path under the state directory. Paths are
// deterministic from IDs, so they survive restarts unchanged and cleanup
// can always find them.
type layout struct {
	stateDir string
}

func (l layout) dbPath() string     { return filepath.Join(l.stateDir, "banger.db") }
func (l layout) imagesDir() string  { return filepath.Join(l.stateDir, "images") }
func (l layout) kernelsDir() string { return filepath.Join(l.stateDir, "kernels") }
func (l layout) vmsDir() string     { return filepath.Join(l.stateDir, "vms") }
func (l layout) imageDir(id string) string {
	return filepath.Join(l.imagesDir(), model.ShortID(id))
}

// poolFile is the default storage pool file; poolDir is where the pool
// is mounted; poolVMDir holds a pool VM's disks (pool.go).
func (l layout) poolFile() string { return filepath.Join(l.stateDir, "pool.img") }
func (l layout) poolDir() string  { return filepath.Join(l.stateDir, "pool") }
func (l layout) poolVMDir(id string) string {
	return filepath.Join(l.poolDir(), "vms", model.ShortID(id))
}

// vmDir is a VM's directory. It is named by the short ID so the API
// socket path stays well under the 108-byte unix socket limit.
func (l layout) vmDir(id string) string { return filepath.Join(l.vmsDir(), model.ShortID(id)) }

// vmPaths fills the deterministic paths of a VM's runtime.
func (l layout) vmPaths(id string, rt *model.VMRuntime) {
	dir := l.vmDir(id)
	rt.VMDir = dir
	rt.APISockPath = filepath.Join(vmmDir(dir), "api.sock")
	rt.LogPath = filepath.Join(dir, "console.log")
	rt.MetricsPath = filepath.Join(vmmDir(dir), "metrics.json")
	rt.WorkDiskPath = filepath.Join(dir, "work.ext4")
	rt.SystemOverlay = filepath.Join(dir, "system.img")
	if rt.OverlayStrategy == "pool" {
		// The disks are in the storage pool (pool.go).
		rt.WorkDiskPath = filepath.Join(l.poolVMDir(id), "work.ext4")
		rt.SystemOverlay = filepath.Join(l.poolVMDir(id), "system.img")
	}
}

func handlesPath(vmDir string) string  { return filepath.Join(vmDir, "handles.json") }
func vmmLogPath(vmDir string) string   { return filepath.Join(vmmDir(vmDir), "vmm.log") }
func fileSyncPath(vmDir string) string { return filepath.Join(vmDir, "file-sync.tar") }
func userKeysPath(vmDir string) string { return filepath.Join(vmDir, "authorized_keys.user") }
