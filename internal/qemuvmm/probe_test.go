package qemuvmm

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/testutil"
)

func TestProbeELFIsPVHBootable(t *testing.T) {
	f, err := elf.NewFile(bytes.NewReader(ProbeELF()))
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS32 || f.Machine != elf.EM_386 || f.Entry != probeCodeAddr {
		t.Errorf("got class %v machine %v entry %#x", f.Class, f.Machine, f.Entry)
	}
	var sawLoad, sawNote bool
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			sawLoad = p.Vaddr == probeLoadAddr && p.Filesz == uint64(probeCodeOff+len(probeCode))
		case elf.PT_NOTE:
			raw := make([]byte, p.Filesz)
			p.ReadAt(raw, 0)
			le := binary.LittleEndian
			sawNote = le.Uint32(raw[8:]) == 18 && string(raw[12:16]) == "Xen\x00" && le.Uint32(raw[16:]) == probeCodeAddr
		}
	}
	if !sawLoad || !sawNote {
		t.Errorf("load segment ok: %v, PVH note ok: %v", sawLoad, sawNote)
	}
	// The absolute addresses baked into the code match the layout: the
	// GDT pointer and the far-jump target.
	le := binary.LittleEndian
	lgdt := bytes.Index(probeCode, []byte{0x0f, 0x01, 0x15})
	ljmp := bytes.IndexByte(probeCode[lgdt:], 0xea) + lgdt
	if got, want := le.Uint32(probeCode[lgdt+3:]), uint32(probeCodeAddr+len(probeCode)-6); got != want {
		t.Errorf("lgdt operand %#x, want the GDT pointer at %#x", got, want)
	}
	if got, want := le.Uint32(probeCode[ljmp+1:]), uint32(probeCodeAddr+ljmp+7); got != want {
		t.Errorf("ljmp target %#x, want the next instruction at %#x", got, want)
	}
}

// TestProbeRunsUnderTCG runs the probe guest for real under software
// emulation, where it must always finish: this proves the ELF boots and
// the probe's success path works.
func TestProbeRunsUnderTCG(t *testing.T) {
	testutil.RequireTools(t, "qemu-system-x86_64")
	if err := Probe(context.Background(), "qemu-system-x86_64", AccelTCG, 20*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestChooseAccelOnPVMHost checks the probe's verdict on a PVM host,
// where an ordinary kernel cannot run under KVM: auto must pick TCG, and
// quickly.
func TestChooseAccelOnPVMHost(t *testing.T) {
	testutil.RequireTools(t, "qemu-system-x86_64")
	if _, err := os.Stat(probeKVMPVM); err != nil {
		t.Skip("not a PVM host")
	}
	start := time.Now()
	c, err := ChooseAccel(context.Background(), "qemu-system-x86_64", AccelAuto, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Accel != AccelTCG {
		t.Errorf("got %+v, want tcg", c)
	}
	t.Logf("choice %+v in %v", c, time.Since(start))
}

func TestChooseAccelExplicit(t *testing.T) {
	for _, want := range []string{AccelKVM, AccelTCG} {
		c, err := ChooseAccel(context.Background(), "/nonexistent/qemu", want, time.Second, nil)
		if err != nil || c.Accel != want {
			t.Errorf("ChooseAccel(%s): got %+v, %v", want, c, err)
		}
	}
	if _, err := ChooseAccel(context.Background(), "qemu", "hvf", time.Second, nil); err == nil {
		t.Error("ChooseAccel(hvf) succeeded")
	}
}

func TestMeasureTSCkHz(t *testing.T) {
	if !haveTSC {
		t.Skip("no TSC on this architecture")
	}
	a := MeasureTSCkHz(20 * time.Millisecond)
	b := MeasureTSCkHz(20 * time.Millisecond)
	if a < 100_000 || a > 10_000_000 {
		t.Fatalf("measured %d kHz, not a plausible TSC frequency", a)
	}
	// Two measurements agree within 1%.
	diff := float64(a) - float64(b)
	if diff < 0 {
		diff = -diff
	}
	if diff/float64(a) > 0.01 {
		t.Errorf("measurements %d and %d kHz differ by more than 1%%", a, b)
	}
	t.Logf("TSC %d kHz", a)
}

// TestMain lets the test binary run one probe as a child process when
// BANGER_PROBE_CHILD names a QEMU binary, for tests that kill it.
func TestMain(m *testing.M) {
	if qemu := os.Getenv("BANGER_PROBE_CHILD"); qemu != "" {
		err := Probe(context.Background(), qemu, AccelKVM, time.Minute)
		fmt.Println("probe:", err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestProbeKilledLeavesNothing kills a process in the middle of a probe
// (a stand-in QEMU that checks it can read the probe ELF from descriptor
// 3, then hangs): QEMU dies with it, and no file is left in TMPDIR.
func TestProbeKilledLeavesNothing(t *testing.T) {
	tmp, work := t.TempDir(), t.TempDir()
	qemu := filepath.Join(work, "qemu")
	script := fmt.Sprintf("#!/bin/sh\nhead -c 4 /dev/fd/3 | od -c | head -1 > %s/elf\necho $$ > %s/pid\nexec sleep 30\n", work, work)
	os.WriteFile(qemu, []byte(script), 0o755)
	self, _ := os.Executable()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "BANGER_PROBE_CHILD="+qemu, "TMPDIR="+tmp)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var qemuPID int
	deadline := time.Now().Add(10 * time.Second)
	for qemuPID == 0 {
		raw, _ := os.ReadFile(filepath.Join(work, "pid"))
		fmt.Sscanf(string(raw), "%d", &qemuPID)
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the probe never started qemu")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	for syscall.Kill(qemuPID, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(qemuPID, syscall.SIGKILL)
			t.Fatal("qemu outlived the killed probe")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if elf, _ := os.ReadFile(filepath.Join(work, "elf")); !strings.Contains(string(elf), "177   E   L   F") {
		t.Errorf("qemu could not read the probe ELF from descriptor 3: %q", elf)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("TMPDIR holds %v after the killed probe", entries)
	}
}
