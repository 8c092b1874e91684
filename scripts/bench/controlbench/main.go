// Command controlbench measures bangerd's control plane through the real
// API client (internal/api) over the daemon's unix socket, with no CLI
// process in the way: create --no-start + rm pairs per second with N
// concurrent clients, and the latency of the list call with many VMs.
// scripts/bench/control.sh runs it against a throwaway daemon; run it
// alone with `go run ./scripts/bench/controlbench -h`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/model"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "controlbench: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("controlbench", flag.ContinueOnError)
	socket := fs.String("socket", os.Getenv("BANGER_SOCKET"), "bangerd's API socket (default $BANGER_SOCKET)")
	mode := fs.String("mode", "pairs", "pairs: create --no-start + rm per second; fill: create -vms VMs; ls: list latency; profile: fetch a CPU profile of bangerd")
	clients := fs.String("clients", "1,8", "pairs: concurrent clients, comma separated, one run each")
	ops := fs.Int("ops", 200, "pairs: create+rm pairs per client")
	vms := fs.Int("vms", 1000, "fill: VMs to have in total (named ls-N)")
	runs := fs.Int("runs", 50, "ls: list calls to time")
	img := fs.String("image", "", "image to create from (default: the daemon's default)")
	pprofSock := fs.String("pprof-socket", "", "profile: bangerd's --pprof-socket")
	out := fs.String("out", "", "profile: file to write the CPU profile to")
	secs := fs.Int("seconds", 8, "profile: how long to profile")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socket == "" && *mode != "profile" {
		return errors.New("no socket: pass -socket or set BANGER_SOCKET")
	}
	ctx := context.Background()
	switch *mode {
	case "pairs":
		for _, s := range strings.Split(*clients, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				return fmt.Errorf("-clients %q: want positive integers", *clients)
			}
			if err := pairs(ctx, *socket, *img, n, *ops); err != nil {
				return err
			}
		}
		return nil
	case "fill":
		return fill(ctx, *socket, *img, *vms)
	case "ls":
		return lsLatency(ctx, *socket, *runs)
	case "profile":
		return profile(ctx, *pprofSock, *out, *secs)
	}
	return fmt.Errorf("-mode %q: use pairs, fill, ls or profile", *mode)
}

func noProgress(api.Event) {}

// pairs runs n clients, each with its own connection, doing ops create
// --no-start + rm pairs, and prints pairs per second.
func pairs(ctx context.Context, socket, img string, n, ops int) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	lat := make([][]time.Duration, n)
	t0 := time.Now()
	for c := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := api.NewClient(socket)
			for i := range ops {
				name := fmt.Sprintf("b%d-%d", c, i)
				s := time.Now()
				if _, err := cl.CreateVM(ctx, model.VMCreateRequest{Name: name, ImageName: img, NoStart: true}, noProgress); err != nil {
					errs[c] = fmt.Errorf("create %s: %w", name, err)
					return
				}
				if err := cl.DeleteVM(ctx, name, api.VMDeleteOptions{}, noProgress); err != nil {
					errs[c] = fmt.Errorf("rm %s: %w", name, err)
					return
				}
				lat[c] = append(lat[c], time.Since(s))
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	fmt.Printf("   API, %d client(s): %d create+rm pairs in %.2f s = %.0f ops/s (pair latency p50 %s, p99 %s)\n",
		n, n*ops, el.Seconds(), float64(n*ops)/el.Seconds(), ms(pct(all, 50)), ms(pct(all, 99)))
	return nil
}

// fill creates VMs named ls-N with 8 clients until want exist.
func fill(ctx context.Context, socket, img string, want int) error {
	have, err := api.NewClient(socket).ListVMs(ctx)
	if err != nil {
		return err
	}
	next := make(chan int)
	go func() {
		for i := len(have); i < want; i++ {
			next <- i
		}
		close(next)
	}()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for c := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := api.NewClient(socket)
			for i := range next {
				if _, err := cl.CreateVM(ctx, model.VMCreateRequest{Name: fmt.Sprintf("ls-%d", i), ImageName: img, NoStart: true}, noProgress); err != nil && errs[c] == nil {
					errs[c] = err
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// lsLatency times runs list calls on one connection (after one warm-up
// call) and prints p50 and p99.
func lsLatency(ctx context.Context, socket string, runs int) error {
	cl := api.NewClient(socket)
	vms, err := cl.ListVMs(ctx)
	if err != nil {
		return err
	}
	var d []time.Duration
	for range runs {
		t := time.Now()
		if _, err := cl.ListVMs(ctx); err != nil {
			return err
		}
		d = append(d, time.Since(t))
	}
	fmt.Printf("   API ListVMs with %d VMs: p50 %s, p99 %s over %d calls (API call alone: request, daemon, every field decoded)\n",
		len(vms), ms(pct(d, 50)), ms(pct(d, 99)), runs)
	// What `vm ls` asks for its table: the brief rows (view=brief).
	d = d[:0]
	for range runs {
		t := time.Now()
		if _, err := cl.ListVMRows(ctx); err != nil {
			return err
		}
		d = append(d, time.Since(t))
	}
	fmt.Printf("   API ListVMRows with %d VMs: p50 %s, p99 %s over %d calls (API call alone, brief rows as the vm ls table asks)\n",
		len(vms), ms(pct(d, 50)), ms(pct(d, 99)), runs)
	return nil
}

// pct is the p-th percentile of d (nearest rank).
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s) + 99) / 100
	i = min(max(i, 1), len(s))
	return s[i-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// profile fetches a CPU profile of bangerd, taken over secs seconds,
// from its --pprof-socket into out.
func profile(ctx context.Context, sock, out string, secs int) error {
	if sock == "" || out == "" {
		return errors.New("profile: pass -pprof-socket and -out")
	}
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://bangerd/debug/pprof/profile?seconds=%d", secs), nil)
	if err != nil {
		return err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: bangerd answered %s", resp.Status)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile: %w", err)
	}
	return f.Close()
}
