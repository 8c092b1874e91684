package api

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Caller is the process on the other end of the API socket, as the kernel
// reports it (SO_PEERCRED).
type Caller struct {
	UID int
	GID int
	PID int
}

// Root reports whether the caller is root, which sees and touches
// everything.
func (c Caller) Root() bool { return c.UID == 0 }

// Owns reports whether the caller may see and change an object owned by
// uid.
func (c Caller) Owns(uid int) bool { return c.Root() || c.UID == uid }

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
