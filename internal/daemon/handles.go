package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"banger/internal/firecracker"
	"banger/internal/fsutil"
	"banger/internal/storage"
)

// vmHandles are a running VM's transient kernel and process handles: the
// VMM's PID, the tap, and what the system overlay has attached. They live
// in the daemon's cache, backed by handles.json in the VM dir, and are
// rediscovered from the OS after a restart; the database never holds them
// (except the tap, mirrored on Runtime.TapDevice, which cannot be derived).
type vmHandles struct {
	// Version is handles.json's format (handlesVersion when written).
	Version int              `json:"version"`
	PID     int              `json:"pid,omitempty"`
	Tap     string           `json:"tap,omitempty"`
	Overlay storage.Attached `json:"overlay,omitempty"`

	// launched is the VMM process when this daemon started it (its
	// exit is then seen as its parent); in memory only.
	launched *firecracker.Process
}

// handlesVersion is the format of handles.json this daemon writes. A file
// without a version is the first format (the same fields); a newer
// version than this daemon knows is not trusted (the handles are then
// rebuilt from the OS, as when the file is missing).
const handlesVersion = 1

// handleCache is the in-memory side of the handles.
type handleCache struct {
	mu sync.Mutex
	m  map[string]vmHandles
}

func newHandleCache() *handleCache { return &handleCache{m: map[string]vmHandles{}} }

func (c *handleCache) get(id string) (vmHandles, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.m[id]
	return h, ok
}

func (c *handleCache) set(id string, h vmHandles) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[id] = h
}

func (c *handleCache) clear(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// setVMHandles records h in the cache and in handles.json (written to a
// temporary file and renamed, so a crash of the daemon leaves the old or
// the new file; not synced: a host crash kills the VMMs too).
func (d *Daemon) setVMHandles(id, vmDir string, h vmHandles) error {
	d.handles.set(id, h)
	h.Version = handlesVersion
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := fsutil.ReplaceFile(handlesPath(vmDir), b, 0o600); err != nil {
		return fmt.Errorf("write handles: %w", err)
	}
	return nil
}

// clearVMHandles forgets a VM's handles in the cache and on disk.
func (d *Daemon) clearVMHandles(id, vmDir string) {
	d.handles.clear(id)
	os.Remove(handlesPath(vmDir))
}

// readHandlesFile reads handles.json; a missing or corrupt file gives
// empty handles and says so.
func readHandlesFile(vmDir string) (vmHandles, error) {
	var h vmHandles
	b, err := os.ReadFile(handlesPath(vmDir))
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return vmHandles{}, fmt.Errorf("corrupt handles.json: %w", err)
	}
	if h.Version > handlesVersion {
		return vmHandles{}, fmt.Errorf("handles.json is version %d, newer than this daemon's %d", h.Version, handlesVersion)
	}
	return h, nil
}
