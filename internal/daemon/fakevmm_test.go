package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"banger/internal/model"
	"banger/internal/proc"
)

// fakeVMMs stands in for the host's VMM processes in unit tests. A VMM
// "launched" by fakeBooter is a process in a fake /proc tree (the VMM
// binary, the VM's API socket and uid), so the daemon finds it the way it
// finds real ones, and it serves Firecracker's Ctrl-Alt-Del on the VM's
// API socket. It exits on Ctrl-Alt-Del (unless told to ignore it), on
// SIGKILL, or when the test says so; the daemon's handles (openProc) see
// that.
type fakeVMMs struct {
	root string // the fake /proc
	bin  string // the VMM binary the daemon is configured with
	mu   sync.Mutex
	next int
	proc map[int]*fakeVMM
	// ignoreCAD makes new VMMs ignore Ctrl-Alt-Del, as a hung guest does.
	ignoreCAD bool
	// failSnapshot and failLoad make new VMMs refuse PUT /snapshot/create
	// and PUT /snapshot/load with this message.
	failSnapshot, failLoad string
	// holds are the clock holds suspends left (fakesnap_test.go);
	// dialled counts the resumes that had to connect again.
	holds   []*fakeHold
	dialled int
	// onReidentify and onAdmitted see a fork's child at those steps
	// (fork_test.go).
	onReidentify, onAdmitted func(s *startRun)
	// renamed lists the workspace branches fork children renamed.
	renamed []string
}

type fakeVMM struct {
	pid      int
	exited   chan struct{}
	once     sync.Once
	ln       net.Listener
	cads     int
	killed   bool
	mu       sync.Mutex
	ignoreCA bool
	// snap is its snapshot behaviour (suspend_test.go).
	snap fakeSnapState
}

func newFakeVMMs(root, bin string) *fakeVMMs {
	return &fakeVMMs{root: root, bin: bin, next: 40000, proc: map[int]*fakeVMM{}}
}

// start adds a VMM process for vm and serves its API socket.
func (f *fakeVMMs) start(vm model.VMRecord) (int, error) {
	f.mu.Lock()
	f.next++
	pid := f.next
	p := &fakeVMM{pid: pid, exited: make(chan struct{}), ignoreCA: f.ignoreCAD}
	f.proc[pid] = p
	f.mu.Unlock()
	if err := proc.WriteFake(f.root, proc.Process{
		PID: pid, PPID: 1, UID: vm.Runtime.VMMUID,
		Argv: []string{f.bin, "--api-sock", vm.Runtime.APISockPath, "--id", model.ShortID(vm.ID)},
	}, f.bin); err != nil {
		return 0, err
	}
	os.MkdirAll(filepath.Dir(vm.Runtime.APISockPath), 0o700)
	os.Remove(vm.Runtime.APISockPath)
	ln, err := net.Listen("unix", vm.Runtime.APISockPath)
	if err != nil {
		return 0, err
	}
	p.ln = ln
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /actions", func(w http.ResponseWriter, r *http.Request) {
		var a struct {
			ActionType string `json:"action_type"`
		}
		json.NewDecoder(r.Body).Decode(&a)
		p.mu.Lock()
		p.cads++
		ignore := p.ignoreCA
		p.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		if a.ActionType == "SendCtrlAltDel" && !ignore {
			go func() {
				time.Sleep(10 * time.Millisecond)
				f.exit(pid)
			}()
		}
	})
	mux.HandleFunc("PUT /actions/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	f.snapshotRoutes(mux, p)
	go http.Serve(ln, mux)
	return pid, nil
}

// exit ends a fake VMM: its /proc entry and socket go.
func (f *fakeVMMs) exit(pid int) {
	f.mu.Lock()
	p := f.proc[pid]
	f.mu.Unlock()
	if p == nil {
		return
	}
	p.once.Do(func() {
		os.RemoveAll(filepath.Join(f.root, strconv.Itoa(pid)))
		if p.ln != nil {
			p.ln.Close()
		}
		close(p.exited)
	})
}

func (f *fakeVMMs) get(pid int) *fakeVMM {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.proc[pid]
}

// open implements Options.OpenProc.
func (f *fakeVMMs) open(pid int) (vmmProc, error) {
	p := f.get(pid)
	if p == nil {
		return nil, fmt.Errorf("fake: no process %d (the daemon signalled a PID it did not launch)", pid)
	}
	select {
	case <-p.exited:
		return nil, nil
	default:
	}
	return fakeHandle{f: f, p: p}, nil
}

type fakeHandle struct {
	f *fakeVMMs
	p *fakeVMM
}

func (h fakeHandle) Kill() error {
	h.p.mu.Lock()
	h.p.killed = true
	h.p.mu.Unlock()
	h.f.exit(h.p.pid)
	return nil
}

func (h fakeHandle) Wait(ctx context.Context, d time.Duration) (bool, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-h.p.exited:
		return true, nil
	case <-t.C:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

func (fakeHandle) Close() {}
