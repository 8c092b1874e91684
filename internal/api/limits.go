package api

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/internal/model"
)

// Access is how the server tells callers apart and what it lets one uid
// hold: who is an admin, how long a request may take to arrive, and the
// per-uid limits on connections and operations in flight. Root and admins
// are exempt from the limits; the timeouts apply to everyone.
type Access struct {
	// AdminGroup names the root-equivalent group ("" = none).
	AdminGroup string
	// ReadTimeout bounds the arrival of a request's headers and body, and
	// each read of an upload stream.
	ReadTimeout time.Duration
	// IdleTimeout closes kept-alive connections idle this long.
	IdleTimeout time.Duration
	// Limits are the per-uid limits; the server enforces Connections and
	// Operations, the backend the rest.
	Limits model.UserLimits
}

// Default timeouts of a server that was not told otherwise.
const (
	defaultReadTimeout = 30 * time.Second
	defaultIdleTimeout = 2 * time.Minute
)

// groupDB answers the group questions of the admin check; tests replace
// it.
type groupDB struct {
	// gidOf returns the gid of a group name.
	gidOf func(name string) (int, error)
	// groupsOf returns the supplementary groups of uid in the group
	// database.
	groupsOf func(uid int) ([]int, error)
}

var hostGroups = groupDB{
	gidOf: func(name string) (int, error) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return -1, err
		}
		return strconv.Atoi(g.Gid)
	},
	groupsOf: func(uid int) ([]int, error) {
		u, err := user.LookupId(strconv.Itoa(uid))
		if err != nil {
			return nil, err
		}
		ids, err := u.GroupIds()
		if err != nil {
			return nil, err
		}
		var out []int
		for _, s := range ids {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
		return out, nil
	},
}

// isAdmin decides from the peer's credentials whether it is an admin: its
// gid (SO_PEERCRED) is the admin group's, or the group database lists the
// uid in that group. Root is root, not an admin; an unknown group, or a
// uid the database does not know, makes nobody an admin.
func isAdmin(c Caller, group string, db groupDB) bool {
	if group == "" || c.UID <= 0 {
		return false
	}
	gid, err := db.gidOf(group)
	if err != nil || gid < 0 {
		return false
	}
	if c.GID == gid {
		return true
	}
	groups, err := db.groupsOf(c.UID)
	if err != nil {
		return false
	}
	return slices.Contains(groups, gid)
}

// adminTTL is how long the server trusts one answer of the group
// database for a uid: lookups happen in the accept loop, and a flood
// from one user must not turn into a flood of lookups.
const adminTTL = 10 * time.Second

// adminCache remembers isAdmin's answers per uid for adminTTL.
type adminCache struct {
	mu      sync.Mutex
	entries map[[2]int]adminEntry // (uid, gid) → answer
	now     func() time.Time
}

type adminEntry struct {
	admin bool
	at    time.Time
}

func newAdminCache() *adminCache {
	return &adminCache{entries: map[[2]int]adminEntry{}, now: time.Now}
}

// isAdmin is isAdmin, answered from the cache while it is fresh.
func (a *adminCache) isAdmin(c Caller, group string, db groupDB) bool {
	if group == "" || c.UID <= 0 {
		return false
	}
	key := [2]int{c.UID, c.GID}
	a.mu.Lock()
	e, ok := a.entries[key]
	a.mu.Unlock()
	if ok && a.now().Sub(e.at) < adminTTL {
		return e.admin
	}
	admin := isAdmin(c, group, db)
	a.mu.Lock()
	if len(a.entries) > 4096 {
		clear(a.entries)
	}
	a.entries[key] = adminEntry{admin: admin, at: a.now()}
	a.mu.Unlock()
	return admin
}

// counter counts something per uid: open connections, operations in
// flight.
type counter struct {
	mu sync.Mutex
	n  map[int]int
}

func newCounter() *counter { return &counter{n: map[int]int{}} }

// add counts one more for uid and returns the new count.
func (c *counter) add(uid int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[uid]++
	return c.n[uid]
}

// done counts one less for uid.
func (c *counter) done(uid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[uid] <= 1 {
		delete(c.n, uid)
		return
	}
	c.n[uid]--
}

// get returns uid's count.
func (c *counter) get(uid int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[uid]
}

// connVerdict is what the connection limit says of a new connection
// from a uid that now has n open.
type connVerdict int

const (
	connOK connVerdict = iota
	// connRefuse: the connection is answered with an error naming the
	// limit, then closed.
	connRefuse
	// connDrop: far over the limit, the connection is closed at once, so
	// a flood costs the daemon no more than an accept.
	connDrop
)

// judgeConn applies the connection limit (0 = none).
func judgeConn(c Caller, n, limit int) connVerdict {
	switch {
	case limit <= 0 || c.Privileged() || n <= limit:
		return connOK
	case n > 2*limit:
		return connDrop
	}
	return connRefuse
}

// limitError is the refusal of a per-uid limit: it names the limit, its
// configuration key and what to do.
func limitError(c Caller, what string, limit int, key, hint string) error {
	return model.Errorf(model.ELIMIT, "uid %d has %s (the limit is %d, config key %s); %s", c.UID, what, limit, key, hint)
}

// callerConn is an accepted connection with its caller, counted until it
// closes.
type callerConn struct {
	net.Conn
	caller  Caller
	verdict connVerdict
	once    sync.Once
	release func()
}

func (c *callerConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// CloseWrite half-closes the connection, so a stream's end reaches the
// client as EOF.
func (c *callerConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// listener reads each connection's caller at accept and applies the
// connection limit.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		caller, err := l.s.peer(c)
		if err != nil {
			// Without credentials the caller is nobody: it owns
			// nothing and sees nothing.
			l.s.logger.Warn("no peer credentials", "err", err)
			caller = Caller{UID: -1, GID: -1}
		}
		caller.Admin = l.s.admins.isAdmin(caller, l.s.access.AdminGroup, l.s.groups)
		n := l.s.conns.add(caller.UID)
		uid := caller.UID
		cc := &callerConn{Conn: c, caller: caller, release: func() { l.s.conns.done(uid) }}
		cc.verdict = judgeConn(caller, n, l.s.access.Limits.Connections)
		if cc.verdict == connDrop {
			cc.Close()
			continue
		}
		return cc, nil
	}
}

type connKey struct{}

// connContext gives each connection's requests its caller.
func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	cc, ok := c.(*callerConn)
	if !ok {
		caller, err := s.peer(c)
		if err != nil {
			s.logger.Warn("no peer credentials", "err", err)
			caller = Caller{UID: -1, GID: -1}
		}
		caller.Admin = s.admins.isAdmin(caller, s.access.AdminGroup, s.groups)
		return WithCaller(ctx, caller)
	}
	return context.WithValue(WithCaller(ctx, cc.caller), connKey{}, cc)
}

// isOperation says whether a request counts against the operations
// limit: everything but reads, and but the connect streams of ssh and
// port-forward and the holds of port-forward, which count as
// connections.
func isOperation(r *http.Request) bool {
	return r.Method != http.MethodGet && r.Method != http.MethodHead && !strings.HasSuffix(r.URL.Path, "/connect") && !strings.HasSuffix(r.URL.Path, "/hold")
}

// guard applies the connection and operation limits before a handler
// runs.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller := CallerFrom(r.Context())
		if cc, ok := r.Context().Value(connKey{}).(*callerConn); ok && cc.verdict == connRefuse {
			w.Header().Set("Connection", "close")
			writeError(w, limitError(caller, fmt.Sprintf("%d connections open to bangerd", s.conns.get(caller.UID)), s.access.Limits.Connections,
				"limits.connections", "close some (banger ssh sessions, logs -f) and retry"))
			return
		}
		if isOperation(r) && !caller.Privileged() {
			n := s.ops.add(caller.UID)
			defer s.ops.done(caller.UID)
			if limit := s.access.Limits.Operations; limit > 0 && n > limit {
				writeError(w, limitError(caller, fmt.Sprintf("%d operations in flight", n-1), limit,
					"limits.operations", "wait for one to finish and retry"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// idleReader sets a read deadline on conn before each read of an
// upgraded stream, so a client that stops sending is cut off.
type idleReader struct {
	conn    net.Conn
	r       io.Reader
	timeout time.Duration
}

func (i *idleReader) Read(p []byte) (int, error) {
	if i.timeout > 0 {
		i.conn.SetReadDeadline(time.Now().Add(i.timeout))
	}
	n, err := i.r.Read(p)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		err = fmt.Errorf("nothing received for %s (api_read_timeout): %w", i.timeout, err)
	}
	return n, err
}
