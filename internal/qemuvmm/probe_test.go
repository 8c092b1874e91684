package qemuvmm

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
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
	c, err := ChooseAccel(context.Background(), "qemu-system-x86_64", AccelAuto, 5*time.Second)
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
		c, err := ChooseAccel(context.Background(), "/nonexistent/qemu", want, time.Second)
		if err != nil || c.Accel != want {
			t.Errorf("ChooseAccel(%s): got %+v, %v", want, c, err)
		}
	}
	if _, err := ChooseAccel(context.Background(), "qemu", "hvf", time.Second); err == nil {
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
