package daemon

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBuildQueueTakesUsersInTurn(t *testing.T) {
	q := newBuildQueue()
	ctx := context.Background()
	release, err := q.acquire(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Mallory queues three builds, then alice one, then bob one: alice
	// and bob wait behind one of mallory's each, not all three.
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	aheads := map[string]int{}
	queue := func(name string, uid int) {
		ready := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			rel, err := q.acquire(ctx, uid, func(n int) {
				mu.Lock()
				aheads[name] = n
				mu.Unlock()
				close(ready)
			})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			rel()
		}()
		<-ready
	}
	queue("m1", 1001)
	queue("m2", 1001)
	queue("m3", 1001)
	queue("a1", 1000)
	queue("b1", 1002)
	// Each hears, when it queues, how many go first: the running build
	// and the builds whose turn comes before its own.
	if aheads["m3"] != 3 || aheads["a1"] != 2 || aheads["b1"] != 3 {
		t.Errorf("builds ahead %v; want m3 3 (running, m1, m2), a1 2 (running, m1), b1 3 (running, m1, a1)", aheads)
	}
	release()
	wg.Wait()
	if want := []string{"m1", "a1", "b1", "m2", "m3"}; !slices.Equal(order, want) {
		t.Errorf("builds ran %v; want %v", order, want)
	}
	// The queue is free again.
	rel, err := q.acquire(ctx, 5, nil)
	if err != nil {
		t.Fatal(err)
	}
	rel()
}

func TestBuildQueueAbandonedWait(t *testing.T) {
	q := newBuildQueue()
	release, _ := q.acquire(context.Background(), 0, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := q.acquire(ctx, 1000, nil); err == nil {
		t.Fatal("a cancelled wait got the slot")
	}
	// The abandoned ticket is gone: the next waiter gets the slot when
	// the running build ends.
	got := make(chan struct{})
	go func() {
		rel, err := q.acquire(context.Background(), 1001, nil)
		if err == nil {
			close(got)
			rel()
		}
	}()
	time.Sleep(20 * time.Millisecond)
	release()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the next build never started after an abandoned wait")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) != 0 || len(q.turns) != 0 {
		t.Errorf("queue left with %v %v", q.waiting, q.turns)
	}
}
