package qemuvmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// Machine is a running VM: the seam between the API and QEMU. The real
// one is a QEMU process driven over QMP; tests use a fake.
type Machine interface {
	// Execute runs a QMP command; out, if not nil, receives its return
	// value.
	Execute(ctx context.Context, cmd string, args, out any) error
	// ExecuteFD runs a QMP command that takes a descriptor (getfd,
	// add-fd), passing f with it.
	ExecuteFD(ctx context.Context, cmd string, args, out any, f *os.File) error
	// Done is closed when the VM has ended (QEMU exited).
	Done() <-chan struct{}
	// ExitErr is how it ended, once Done is closed: nil for a clean exit
	// (guest reboot or poweroff), else why not.
	ExitErr() error
	// Kill ends the VM at once.
	Kill()
}

// StartFunc starts a machine for spec. It returns once the VM runs and
// QMP answers.
type StartFunc func(ctx context.Context, spec MachineSpec) (Machine, error)

// QEMUStarter starts real QEMU processes.
type QEMUStarter struct {
	// Bin is the QEMU binary, e.g. qemu-system-x86_64.
	Bin string
	// Stdout receives the guest's serial console; Stderr QEMU's own
	// messages. They are passed to QEMU as they are (an *os.File is
	// inherited without a copying goroutine).
	Stdout, Stderr io.Writer
	Log            *slog.Logger
}

// qemuMachine is a QEMU child process.
type qemuMachine struct {
	proc *os.Process
	qmp  *qmpConn
	done chan struct{}
	// exitErr is set before done is closed.
	exitErr  error
	killOnce sync.Once
}

// Start runs QEMU for spec. QEMU must die with this process: it gets
// PR_SET_PDEATHSIG=SIGKILL, which the kernel ties to the thread that
// forked it, not to the process; so a goroutine locked to its OS thread
// forks QEMU and stays there, waiting for it, for QEMU's whole life.
func (s *QEMUStarter) Start(ctx context.Context, spec MachineSpec) (Machine, error) {
	args := QEMUArgs(spec)
	if err := os.Remove(spec.QMPSocket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("start qemu: remove stale qmp socket: %w", err)
	}
	if s.Log != nil {
		s.Log.Info("starting qemu", "bin", s.Bin, "args", args)
	}
	m := &qemuMachine{done: make(chan struct{})}
	started := make(chan error, 1)
	// This goroutine owns the QEMU process and ends when QEMU has been
	// reaped. Returning with the thread still locked makes the runtime
	// retire that thread, which is harmless once QEMU is gone.
	go func() {
		runtime.LockOSThread()
		cmd := exec.Command(s.Bin, args...)
		cmd.Stdin = nil // /dev/null
		cmd.Stdout = s.Stdout
		cmd.Stderr = s.Stderr
		cmd.ExtraFiles = spec.Files
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		m.proc = cmd.Process
		started <- nil
		err := cmd.Wait()
		if err != nil {
			m.exitErr = fmt.Errorf("qemu: %w", err)
		}
		close(m.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	qmp, err := dialQMP(ctx, spec.QMPSocket, m.done)
	if err != nil {
		m.Kill()
		<-m.done
		if m.exitErr != nil {
			return nil, fmt.Errorf("start qemu: %w (%v)", err, m.exitErr)
		}
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	m.qmp = qmp
	// The connection is closed once QEMU is gone; this goroutine ends then.
	go func() {
		<-m.done
		qmp.Close()
	}()
	return m, nil
}

func (m *qemuMachine) Execute(ctx context.Context, cmd string, args, out any) error {
	select {
	case <-m.done:
		return errors.New("qemu has exited")
	default:
	}
	return m.qmp.Execute(ctx, cmd, args, out)
}

func (m *qemuMachine) ExecuteFD(ctx context.Context, cmd string, args, out any, f *os.File) error {
	select {
	case <-m.done:
		return errors.New("qemu has exited")
	default:
	}
	return m.qmp.ExecuteFD(ctx, cmd, args, out, f)
}

func (m *qemuMachine) Done() <-chan struct{} { return m.done }

func (m *qemuMachine) ExitErr() error {
	<-m.done
	return m.exitErr
}

func (m *qemuMachine) Kill() {
	m.killOnce.Do(func() {
		select {
		case <-m.done:
		default:
			m.proc.Kill()
		}
	})
}

// PID returns QEMU's process id.
func (m *qemuMachine) PID() int { return m.proc.Pid }
