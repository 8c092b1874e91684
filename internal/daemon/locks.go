package daemon

import (
	"context"
	"sync"

	"banger/internal/model"
)

// vmLocks hands out one mutex per VM ID. Every lifecycle operation holds
// its VM's lock, so start, stop, set and delete of one VM never interleave,
// while different VMs proceed in parallel.
type vmLocks struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func newVMLocks() *vmLocks { return &vmLocks{locks: map[string]*sync.Mutex{}} }

// lock locks id's mutex and returns its unlock function.
func (l *vmLocks) lock(id string) func() {
	l.mu.Lock()
	m, ok := l.locks[id]
	if !ok {
		m = &sync.Mutex{}
		l.locks[id] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// forget drops the mutex of a deleted VM. The caller holds the VM's lock.
func (l *vmLocks) forget(id string) {
	l.mu.Lock()
	delete(l.locks, id)
	l.mu.Unlock()
}

// tryLock locks id's mutex if it is free.
func (l *vmLocks) tryLock(id string) (func(), bool) {
	l.mu.Lock()
	m, ok := l.locks[id]
	if !ok {
		m = &sync.Mutex{}
		l.locks[id] = m
	}
	l.mu.Unlock()
	if !m.TryLock() {
		return nil, false
	}
	return m.Unlock, true
}

// lockVM finds ref as the caller sees it, takes the VM's lock and reads
// the row again under it, since another operation may have changed it
// while this one waited. The caller calls unlock. Every operation that
// takes the lock this way is use of the VM: it touches LastTouchedAt, so
// the idle auto-stop counts it.
func (d *Daemon) lockVM(ctx context.Context, ref string) (vm model.VMRecord, unlock func(), err error) {
	return d.lockVMTouch(ctx, ref, true)
}

// lockVMTouch is lockVM; touch=false leaves LastTouchedAt alone (a
// delete: the row is about to go, so recording use would only cost a
// write).
func (d *Daemon) lockVMTouch(ctx context.Context, ref string, touch bool) (vm model.VMRecord, unlock func(), err error) {
	vm, err = d.findVM(ctx, ref)
	if err != nil {
		return vm, nil, err
	}
	unlock = d.locks.lock(vm.ID)
	if touch {
		d.touch(vm.ID)
	}
	if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
		unlock()
		return vm, nil, err
	}
	return vm, unlock, nil
}
