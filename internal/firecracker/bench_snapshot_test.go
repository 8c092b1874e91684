package firecracker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/guest"
	"banger/internal/hostexec"
	"banger/internal/storage"
	"banger/internal/testutil"
)

// BenchmarkSnapshotSSH measures what snapshots buy on this host, with the
// Debian test image (BANGER_TEST_IMAGE_DIR) and the daemon's key
// (BANGER_TEST_SSH_KEY), banger-vmm-qemu run as the daemon runs it
// (unprivileged, files as descriptors), 2 vCPUs and 2 GiB: a cold boot to
// SSH, the guest left idle, a snapshot (time and file sizes), then a new
// VMM loading it to SSH. scripts/bench/snapshot.sh runs it inside a
// network namespace of its own (BANGER_BENCH_NETNS=1), where it makes its
// tap; it refuses to run elsewhere.
func BenchmarkSnapshotSSH(b *testing.B) {
	requireVMHost(b)
	imageDir := testutil.RequireEnvFile(b, "BANGER_TEST_IMAGE_DIR", "the Debian test image's directory")
	keyPath := testutil.RequireEnvFile(b, "BANGER_TEST_SSH_KEY", "the daemon's SSH key")
	if os.Getenv("BANGER_BENCH_NETNS") != "1" {
		b.Skip("run through scripts/bench/snapshot.sh, which gives the benchmark a network namespace of its own")
	}
	signer, err := guest.LoadSigner(keyPath)
	if err != nil {
		b.Fatal(err)
	}
	idle := 10 * time.Second
	if s := os.Getenv("BANGER_BENCH_IDLE"); s != "" {
		if idle, err = time.ParseDuration(s); err != nil {
			b.Fatal(err)
		}
	}
	const (
		gw, guestIP, mac = "172.31.97.1", "172.31.97.2", "06:00:AC:1F:61:02"
		memMiB           = 2048
	)
	ctx := context.Background()
	ip := func(args ...string) {
		b.Helper()
		if out, err := (hostexec.Real{}).Run(ctx, "ip", args...); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
	ip("link", "set", "lo", "up")
	ip("tuntap", "add", "dev", "bgsnap0", "mode", "tap")
	b.Cleanup(func() { (hostexec.Real{}).Run(ctx, "ip", "link", "del", "bgsnap0") })
	ip("addr", "add", gw+"/24", "dev", "bgsnap0")
	ip("link", "set", "bgsnap0", "up")
	// A static neighbour entry: the first SYN goes out at once, so the
	// wait for SSH is not paced by ARP retries.
	ip("neigh", "replace", guestIP, "lladdr", mac, "dev", "bgsnap0", "nud", "permanent")

	dir, vmmDir, bin := unprivilegedLayout(b)
	for _, f := range []string{"vmlinux", "rootfs.ext4", "work-seed.ext4"} {
		src := filepath.Join(imageDir, f)
		dst := filepath.Join(dir, f)
		if _, err := (hostexec.Real{}).Run(ctx, "cp", "--sparse=always", src, dst); err != nil {
			b.Fatal(err)
		}
		os.Chmod(dst, 0o600)
	}
	// The guest presents a host key made here, as the daemon does for
	// each VM: banger's SSH client trusts no key on first use.
	priv, pub, err := guest.NewHostKey()
	if err != nil {
		b.Fatal(err)
	}
	const keyUID = 1500000099
	rootfs := filepath.Join(dir, "rootfs.ext4")
	os.Chown(rootfs, keyUID, keyUID)
	if err := storage.New(hostexec.Real{}, nil, storage.Options{}).InstallHostKey(ctx, rootfs, keyUID, storage.HostKey{Private: priv, Public: pub}); err != nil {
		b.Fatal(err)
	}
	os.Chown(rootfs, 0, 0)
	open := func(name string, flag int) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), flag, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		return f
	}
	tap, err := OpenTap("bgsnap0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tap.Close() })
	files := []*os.File{open("vmlinux", os.O_RDONLY), open("rootfs.ext4", os.O_RDWR), open("work-seed.ext4", os.O_RDWR), tap}
	taps := map[string]int{"bgsnap0": ExtraFileFD(3)}
	// waitSSH waits as the daemon does (guest.WaitReady): each attempt
	// may take its time once the TCP connection is made. A short bound per
	// attempt cut off handshakes that an emulated guest, busy right after
	// a load, takes a few seconds to finish, and counted the retries.
	waitSSH := func(start time.Time) time.Duration {
		b.Helper()
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		c, err := guest.WaitReady(wctx, guestIP+":22", signer, pub, 20*time.Millisecond)
		if err != nil {
			b.Fatalf("no SSH from %s: %v", guestIP, err)
		}
		c.Close()
		return time.Since(start)
	}

	for i := 0; i < b.N; i++ {
		// Cold boot.
		launched := time.Now()
		pA, c := launchUnprivileged(b, bin, vmmDir, filepath.Join(dir, "cold.log"), "bench-cold", files, taps)
		args, err := BootArgs(BootArgsConfig{IP: "ip=" + guestIP + "::" + gw + ":255.255.255.0:bench:eth0:off", Hostname: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		work := must(NewDrive("work", FDPath(ExtraFileFD(2)), false, false))
		work.CacheType = CacheWriteback
		for _, step := range []func() error{
			func() error { return c.PutMachineConfig(ctx, must(NewMachineConfig(2, memMiB))) },
			func() error { return c.PutBootSource(ctx, must(NewBootSource(FDPath(ExtraFileFD(0)), "", args))) },
			func() error { return c.PutDrive(ctx, must(NewDrive("rootfs", FDPath(ExtraFileFD(1)), true, false))) },
			func() error { return c.PutDrive(ctx, work) },
			func() error { return c.PutNetworkInterface(ctx, must(NewNetworkInterface("eth0", "bgsnap0", mac))) },
		} {
			if err := step(); err != nil {
				b.Fatal(err)
			}
		}
		started := time.Now()
		if err := c.InstanceStart(ctx); err != nil {
			b.Fatal(err)
		}
		coldStart := waitSSH(started)
		coldLaunch := time.Since(launched)

		// Idle, then the snapshot.
		time.Sleep(idle)
		state, mem := filepath.Join(vmmDir, "bench.snap"), filepath.Join(vmmDir, "bench.mem")
		if err := c.Pause(ctx); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := c.CreateSnapshot(ctx, must(NewSnapshotCreate(state, mem))); err != nil {
			b.Fatal(err)
		}
		snapTime := time.Since(t0)
		stSize := fileSize(b, state)
		memApparent, memSize := fileUsage(b, mem)
		unix.Kill(pA.PID, unix.SIGKILL)
		<-pA.Done()

		// Load in a new VMM.
		launched = time.Now()
		_, cl := launchUnprivileged(b, bin, vmmDir, filepath.Join(dir, "load.log"), "bench-load", files, taps)
		loadReq := time.Now()
		if err := cl.LoadSnapshot(ctx, must(NewSnapshotLoad(state, mem, true, nil))); err != nil {
			b.Fatal(err)
		}
		loadCall := time.Since(loadReq)
		loadStart := waitSSH(loadReq)
		loadLaunch := time.Since(launched)

		fmt.Printf("guest: Debian test image, 2 vCPUs, %d MiB, idle %v after SSH answered\n", memMiB, idle)
		fmt.Printf("snapshot: %.2f s (paused → PUT /snapshot/create answered); state file %d bytes, memory file %.1f MiB on disk (%d bytes; sparse, %d apparent)\n",
			snapTime.Seconds(), stSize, float64(memSize)/(1<<20), memSize, memApparent)
		fmt.Printf("cold boot: InstanceStart → SSH %.2f s; VMM start → SSH %.2f s\n", coldStart.Seconds(), coldLaunch.Seconds())
		fmt.Printf("load:      PUT /snapshot/load → SSH %.2f s (the load call itself %.2f s); VMM start → SSH %.2f s\n",
			loadStart.Seconds(), loadCall.Seconds(), loadLaunch.Seconds())
		fmt.Printf("ratio load/cold: %.3f (load → SSH over InstanceStart → SSH), %.3f (VMM start → SSH, both)\n",
			loadStart.Seconds()/coldStart.Seconds(), loadLaunch.Seconds()/coldLaunch.Seconds())
		// What an SSH login costs a running guest (key exchange and
		// authentication are emulated guest CPU), and the VMM's own
		// timings of the snapshot's phases.
		warm := waitSSH(time.Now())
		fmt.Printf("an SSH login to the running, restored guest: %.2f s\n", warm.Seconds())
		for _, log := range []string{"cold.log", "load.log"} {
			raw, _ := os.ReadFile(filepath.Join(dir, log))
			for _, l := range strings.Split(string(raw), "\n") {
				if strings.Contains(l, "snapshot") || strings.Contains(l, "for the load") {
					fmt.Println("  vmm:", l)
				}
			}
		}
		b.ReportMetric(snapTime.Seconds(), "snapshot-s")
		b.ReportMetric(float64(memSize)/(1<<20), "mem-file-MiB")
		b.ReportMetric(coldStart.Seconds(), "cold-ssh-s")
		b.ReportMetric(loadStart.Seconds(), "load-ssh-s")
	}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
