package api

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Caller is the process on the other end of the API socket, as the kernel
// reports it (SO_PEERCRED), and whether the server found it in the admin
// group.
type Caller struct {
	UID int
	GID int
	PID int
	// Admin says the caller is a member of the admin group (its gid, or
	// its uid's supplementary groups in the group database): it is
	// root-equivalent.
	Admin bool
}

// Root reports whether the caller is uid 0. Only root's own requests may
// name host paths for the daemon to open.
func (c Caller) Root() bool { return c.UID == 0 }

// Privileged reports whether the caller is root or an admin: it sees and
// touches everything, builds kernels, and no per-user limit applies.
func (c Caller) Privileged() bool { return c.Root() || c.Admin }

// Owns reports whether the caller may see and change an object owned by
// uid.
func (c Caller) Owns(uid int) bool { return c.Privileged() || c.UID == uid }

type callerKey struct{}

// WithCaller returns ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller in ctx. A context without one is an
// internal call and acts as root.
func CallerFrom(ctx context.Context) Caller {
	if c, ok := ctx.Value(callerKey{}).(Caller); ok {
		return c
	}
	return Caller{UID: 0, GID: 0}
}

// peerCaller reads SO_PEERCRED from a unix connection.
func peerCaller(c net.Conn) (Caller, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Caller{}, fmt.Errorf("peer credentials: not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("peer credentials: %w", credErr)
	}
	return Caller{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}, nil
}
