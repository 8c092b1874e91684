package qemuvmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// synthELF builds an ELF64 little-endian file: the header, two program
// headers (a PT_LOAD and a PT_NOTE inside it), the segment, then 4 KiB
// standing in for the symbol tables and a section header table.
func synthELF(t *testing.T) []byte {
	t.Helper()
	le := binary.LittleEndian
	const phoff, segOff, segSize = 64, 0x1000, 0x2000
	b := make([]byte, segOff+segSize+4096+64)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le.PutUint16(b[16:], uint16(elf.ET_EXEC))
	le.PutUint16(b[18:], uint16(elf.EM_X86_64))
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], 0x1000000)
	le.PutUint64(b[elfOffPhoff:], phoff)
	le.PutUint64(b[elfOffShoff:], uint64(segOff+segSize+4096))
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[elfOffPhentsize:], elfPhdrSize64)
	le.PutUint16(b[elfOffPhnum:], 2)
	le.PutUint16(b[58:], 64)
	le.PutUint16(b[elfOffShnum:], 1)
	le.PutUint16(b[elfOffShstrndx:], 0)
	ph := func(i int, typ elf.ProgType, off, size uint64) {
		p := b[phoff+i*elfPhdrSize64:]
		le.PutUint32(p[0:], uint32(typ))
		le.PutUint32(p[4:], uint32(elf.PF_R|elf.PF_X))
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], 0x1000000+off)
		le.PutUint64(p[24:], 0x1000000+off)
		le.PutUint64(p[32:], size)
		le.PutUint64(p[40:], size)
		le.PutUint64(p[48:], 0x1000)
	}
	ph(0, elf.PT_LOAD, segOff, segSize)
	ph(1, elf.PT_NOTE, segOff+0x100, 0x20)
	for i := segOff; i < segOff+segSize; i++ {
		b[i] = byte(i * 7)
	}
	for i := segOff + segSize; i < segOff+segSize+4096; i++ {
		b[i] = 0xee // the "symbol tables": must not be copied
	}
	// The section header table holds the null section (zeros).
	return b
}

// checkTrimmedCopy copies src as machineSpec does for a kernel and
// checks that the copy is a valid ELF with the same segments, no section
// headers, and nothing past the last segment.
func checkTrimmedCopy(t *testing.T, src *os.File, size int64) {
	t.Helper()
	end, ok := loadableELFEnd(src, size)
	if !ok || end >= size {
		t.Fatalf("loadableELFEnd = %d, %v; want a cut before %d", end, ok, size)
	}
	dst, err := copyForQEMU(t.TempDir(), "kernel", src, end)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := trimELF(dst); err != nil {
		t.Fatal(err)
	}
	st, _ := dst.Stat()
	if st.Size() != end {
		t.Errorf("copy is %d bytes; want %d", st.Size(), end)
	}
	orig, err := elf.NewFile(src)
	if err != nil {
		t.Fatal(err)
	}
	cut, err := elf.NewFile(dst)
	if err != nil {
		t.Fatalf("the trimmed copy is no valid ELF: %v", err)
	}
	if len(cut.Sections) != 0 {
		t.Errorf("trimmed copy has %d sections; want none", len(cut.Sections))
	}
	if cut.Entry != orig.Entry || len(cut.Progs) != len(orig.Progs) {
		t.Fatalf("entry %#x, %d segments; want %#x, %d", cut.Entry, len(cut.Progs), orig.Entry, len(orig.Progs))
	}
	for i, p := range orig.Progs {
		q := cut.Progs[i]
		if p.ProgHeader != q.ProgHeader {
			t.Errorf("segment %d: %+v; want %+v", i, q.ProgHeader, p.ProgHeader)
		}
		a, _ := io.ReadAll(p.Open())
		c, _ := io.ReadAll(q.Open())
		if !bytes.Equal(a, c) {
			t.Errorf("segment %d: content differs", i)
		}
	}
}

func TestKernelCopyTrimsELF(t *testing.T) {
	b := synthELF(t)
	p := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if end, _ := loadableELFEnd(f, int64(len(b))); end != 0x3000 {
		t.Errorf("end %#x; want 0x3000", end)
	}
	checkTrimmedCopy(t, f, int64(len(b)))
}

// TestKernelCopyRealVmlinux trims the test kernel (BANGER_TEST_KERNEL),
// whose PVH note must survive.
func TestKernelCopyRealVmlinux(t *testing.T) {
	k := os.Getenv("BANGER_TEST_KERNEL")
	if k == "" {
		t.Skip("BANGER_TEST_KERNEL not set (scripts/prepare-artifacts.sh)")
	}
	f, err := os.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	checkTrimmedCopy(t, f, st.Size())
}

// TestLoadableELFEndRefuses checks that anything but a sound ELF64
// little-endian file is copied whole.
func TestLoadableELFEndRefuses(t *testing.T) {
	good := synthELF(t)
	le := binary.LittleEndian
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	for name, b := range map[string][]byte{
		"empty":           nil,
		"short header":    good[:40],
		"not elf":         mod(func(b []byte) []byte { b[0] = 'X'; return b }),
		"32-bit":          mod(func(b []byte) []byte { b[4] = 1; return b }),
		"big-endian":      mod(func(b []byte) []byte { b[5] = 2; return b }),
		"no segments":     mod(func(b []byte) []byte { le.PutUint16(b[elfOffPhnum:], 0); return b }),
		"many headers":    mod(func(b []byte) []byte { le.PutUint16(b[elfOffPhnum:], 0xffff); return b }),
		"small phentsize": mod(func(b []byte) []byte { le.PutUint16(b[elfOffPhentsize:], 8); return b }),
		"table outside":   mod(func(b []byte) []byte { le.PutUint64(b[elfOffPhoff:], uint64(len(b))); return b }),
		"segment outside": mod(func(b []byte) []byte { le.PutUint64(b[64+32:], 1<<62); return b }),
		"offset overflow": mod(func(b []byte) []byte { le.PutUint64(b[64+8:], 1<<63); return b }),
		"nothing to cut":  mod(func(b []byte) []byte { return b[:0x3000] }),
	} {
		if end, ok := loadableELFEnd(bytes.NewReader(b), int64(len(b))); ok {
			t.Errorf("%s: cut at %d; want the whole file copied", name, end)
		}
	}
}
