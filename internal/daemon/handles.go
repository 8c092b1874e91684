package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"banger/internal/firecracker"
	"banger/internal/storage"
)

// vmHandles are a running VM's transient kernel and process handles: the
// VMM's PID, the tap, and what the system overlay has attached. They live
// in the daemon's cache, backed by handles.json in the VM dir, and are
// rediscovered from the OS after a restart; the database never holds them
// (except the tap, mirrored on Runtime.TapDevice, which cannot be derived).
type vmHandles struct {
	PID     int              `json:"pid,omitempty"`
	Tap     string           `json:"tap,omitempty"`
	Overlay storage.Attached `json:"overlay,omitempty"`

	// launched is the VMM process when this daemon started it (its
	// exit is then seen as its parent); in memory only.
	launched *firecracker.Process
}

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
// temporary file and renamed, so a crash leaves the old or the new file).
func (d *Daemon) setVMHandles(id, vmDir string, h vmHandles) error {
	d.handles.set(id, h)
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	path := handlesPath(vmDir)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write handles: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write handles: %w", err)
	}
	return nil
}

// clearVMHandles forgets a VM's handles in the cache and on disk.
func (d *Daemon) clearVMHandles(id, vmDir string) {
	d.handles.clear(id)
	os.Remove(handlesPath(vmDir))
	os.Remove(handlesPath(vmDir) + ".tmp")
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
	return h, nil
}
