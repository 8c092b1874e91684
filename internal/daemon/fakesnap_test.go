package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"banger/internal/firecracker"
	"banger/internal/guest"
	"banger/internal/model"
)

// The fake VMM's snapshot behaviour: PATCH /vm pauses and resumes, PUT
// /snapshot/create (paused only) writes a state file and a memory file
// that name the snapshot, PUT /snapshot/load (fresh VMMs only) reads
// them back and checks they belong together, as banger-vmm-qemu does.

// fakeSnapState is a fake VMM's snapshot state.
type fakeSnapState struct {
	paused bool
	// loaded is the snapshot this VMM was restored from ("" after a boot).
	loaded string
	// tap is the tap its interface was moved to by the load.
	tap string
	// took counts the snapshots it wrote.
	took int
}

const fakeSnapMagic = "fake-snapshot "

func writeFault(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}

func (f *fakeVMMs) snapshotRoutes(mux *http.ServeMux, p *fakeVMM) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		state := "Running"
		if p.snap.paused {
			state = "Paused"
		}
		p.mu.Unlock()
		json.NewEncoder(w).Encode(firecracker.InstanceInfo{AppName: "fake", State: state})
	})
	mux.HandleFunc("PATCH /vm", func(w http.ResponseWriter, r *http.Request) {
		var body firecracker.VMState
		json.NewDecoder(r.Body).Decode(&body)
		p.mu.Lock()
		defer p.mu.Unlock()
		switch body.State {
		case "Paused":
			p.snap.paused = true
		case "Resumed":
			p.snap.paused = false
		default:
			writeFault(w, "unknown state "+body.State)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	for _, path := range []string{"PUT /logger", "PUT /metrics"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	}
	mux.HandleFunc("PUT /snapshot/create", func(w http.ResponseWriter, r *http.Request) {
		var body firecracker.SnapshotCreate
		json.NewDecoder(r.Body).Decode(&body)
		f.mu.Lock()
		fail := f.failSnapshot
		f.mu.Unlock()
		p.mu.Lock()
		defer p.mu.Unlock()
		switch {
		case fail != "":
			writeFault(w, fail)
			return
		case !p.snap.paused:
			writeFault(w, "Create snapshot error: the microVM must be paused first")
			return
		}
		p.snap.took++
		id := fmt.Sprintf("pid=%d n=%d", p.pid, p.snap.took)
		// The memory is a few pages, so the saved state has a size.
		if err := os.WriteFile(body.MemFilePath, []byte("fake-memory "+id+"\n"+strings.Repeat("m", 3*4096)), 0o600); err != nil {
			writeFault(w, err.Error())
			return
		}
		if err := os.WriteFile(body.SnapshotPath, []byte(fakeSnapMagic+id+"\n"), 0o600); err != nil {
			writeFault(w, err.Error())
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /snapshot/load", func(w http.ResponseWriter, r *http.Request) {
		var body firecracker.SnapshotLoad
		json.NewDecoder(r.Body).Decode(&body)
		f.mu.Lock()
		fail := f.failLoad
		f.mu.Unlock()
		p.mu.Lock()
		defer p.mu.Unlock()
		if fail != "" {
			writeFault(w, "Load snapshot error: "+fail)
			return
		}
		if p.snap.loaded != "" {
			writeFault(w, "Load snapshot error: not a fresh VMM")
			return
		}
		st, err1 := os.ReadFile(body.SnapshotPath)
		mem, err2 := os.ReadFile(body.MemBackend.BackendPath)
		if err1 != nil || err2 != nil {
			writeFault(w, fmt.Sprintf("Load snapshot error: %v %v", err1, err2))
			return
		}
		id, ok := strings.CutPrefix(strings.TrimSpace(string(st)), fakeSnapMagic)
		if !ok || !strings.HasPrefix(string(mem), "fake-memory "+id+"\n") {
			writeFault(w, "Load snapshot error: the memory file belongs to another snapshot")
			return
		}
		for _, o := range body.NetworkOverrides {
			if o.IfaceID == snapshotIface {
				p.snap.tap = o.HostDevName
			}
		}
		p.snap.loaded = id
		p.snap.paused = !body.ResumeVM
		w.WriteHeader(http.StatusNoContent)
	})
}

// snapOf returns a fake VMM's snapshot state.
func (f *fakeVMMs) snapOf(pid int) fakeSnapState {
	p := f.get(pid)
	if p == nil {
		return fakeSnapState{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snap
}

// The fake booter's side of suspend and resume. Failures: failAt
// "snapshots" (the VMM cannot snapshot), "sync", "load", "clock".

func (b fakeBooter) snapshots() error {
	if err := b.failed("snapshots"); err != nil {
		return model.Errorf(model.EUNAVAILABLE, "%v", err)
	}
	return nil
}

// fakeHold stands in for the session a suspend leaves in the guest.
type fakeHold struct {
	mu     sync.Mutex
	set    int
	closed bool
	fail   error
}

func (h *fakeHold) Set(ctx context.Context, now func() time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("fake hold: closed")
	}
	h.closed = true
	if h.fail != nil {
		return h.fail
	}
	h.set++
	return nil
}

func (h *fakeHold) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
}

func (b fakeBooter) prepareSuspend(ctx context.Context, vm model.VMRecord) (clockHold, error) {
	if err := b.failed("sync"); err != nil {
		return nil, err
	}
	h := &fakeHold{}
	b.vmms.mu.Lock()
	b.vmms.holds = append(b.vmms.holds, h)
	b.vmms.mu.Unlock()
	return h, nil
}

func (b fakeBooter) startWaiter(ctx context.Context, vm model.VMRecord, port int) (string, error) {
	if err := b.failed("waiter"); err != nil {
		return "", err
	}
	return guest.NewWaiterToken()
}

func (b fakeBooter) load(ctx context.Context, s *startRun) error {
	if err := b.failed("load"); err != nil {
		return err
	}
	return loadVMM(ctx, firecracker.NewClient(s.vm.Runtime.APISockPath), s.vm, s.restore, s.h.Tap)
}

func (b fakeBooter) waitResumed(ctx context.Context, s *startRun) error {
	if err := b.failed("clock"); err != nil {
		return err
	}
	// A guest answers only once its vCPUs run again.
	if b.vmms.snapOf(s.h.PID).paused {
		return fmt.Errorf("fake: the guest is still paused; no SSH answer")
	}
	if s.held != nil {
		err := s.held.Set(ctx, time.Now)
		s.held = nil
		if err == nil {
			return nil
		}
	}
	b.vmms.mu.Lock()
	b.vmms.dialled++
	b.vmms.mu.Unlock()
	return nil
}
