package daemon

import (
	"context"
	"slices"
	"sync"
)

// buildQueue runs kernel and image builds one at a time (they compete for
// the same CPUs, disk and caches). Waiting builds are served user by user
// in turn, each user's own in the order they came: however many builds
// one user queues, another user's build waits for at most one of them.
// A build's own time is bounded by build_timeout, so nobody holds the
// slot for ever.
type buildQueue struct {
	mu      sync.Mutex
	running bool
	waiting map[int][]*buildTicket // uid → its waiting builds, oldest first
	turns   []int                  // uids with waiting builds, next turn first
}

type buildTicket struct {
	uid   int
	ready chan struct{}
}

func newBuildQueue() *buildQueue { return &buildQueue{waiting: map[int][]*buildTicket{}} }

// acquire waits for uid's turn, or for ctx to end. ahead, when set, hears
// how many builds go first before the wait begins. The caller calls
// release when its build is done.
func (q *buildQueue) acquire(ctx context.Context, uid int, ahead func(n int)) (release func(), err error) {
	q.mu.Lock()
	if !q.running {
		q.running = true
		q.mu.Unlock()
		return q.release, nil
	}
	t := &buildTicket{uid: uid, ready: make(chan struct{})}
	if len(q.waiting[uid]) == 0 {
		q.turns = append(q.turns, uid)
	}
	q.waiting[uid] = append(q.waiting[uid], t)
	n := slices.Index(grantOrder(q.turns, q.waiting), t) + 1 // the running build too
	q.mu.Unlock()
	if ahead != nil {
		ahead(n)
	}
	select {
	case <-t.ready:
		return q.release, nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-t.ready:
		// Granted as the wait ended: pass the turn on.
		q.releaseLocked()
	default:
		q.remove(t)
	}
	return nil, ctx.Err()
}

// release ends the running build and starts the next one's turn.
func (q *buildQueue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.releaseLocked()
}

func (q *buildQueue) releaseLocked() {
	if len(q.turns) == 0 {
		q.running = false
		return
	}
	uid := q.turns[0]
	q.turns = q.turns[1:]
	t := q.waiting[uid][0]
	q.waiting[uid] = q.waiting[uid][1:]
	if len(q.waiting[uid]) > 0 {
		q.turns = append(q.turns, uid)
	} else {
		delete(q.waiting, uid)
	}
	close(t.ready)
}

// remove takes a ticket whose wait was abandoned out of the queue.
func (q *buildQueue) remove(t *buildTicket) {
	list := q.waiting[t.uid]
	i := slices.Index(list, t)
	if i < 0 {
		return
	}
	list = slices.Delete(list, i, i+1)
	if len(list) == 0 {
		delete(q.waiting, t.uid)
		q.turns = slices.DeleteFunc(q.turns, func(u int) bool { return u == t.uid })
		return
	}
	q.waiting[t.uid] = list
}

// grantOrder is the order waiting builds will run in: one per user in
// turn, each user's oldest first.
func grantOrder(turns []int, waiting map[int][]*buildTicket) []*buildTicket {
	next := map[int]int{}
	queue := slices.Clone(turns)
	var out []*buildTicket
	for len(queue) > 0 {
		uid := queue[0]
		queue = queue[1:]
		i := next[uid]
		out = append(out, waiting[uid][i])
		next[uid] = i + 1
		if i+1 < len(waiting[uid]) {
			queue = append(queue, uid)
		}
	}
	return out
}
