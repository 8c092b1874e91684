package qemuvmm

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestCopyPages copies a sparse memory image both ways: only non-zero
// pages are written (zero pages and holes stay holes), at their offsets,
// and the checksum of the way out matches the way back.
func TestCopyPages(t *testing.T) {
	ram, err := newGuestRAM(64)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	pages := map[int64][]byte{
		0:                 bytes.Repeat([]byte{1}, ramPage),
		5 << 20:           bytes.Repeat([]byte("abc"), 3*ramPage/3),
		63<<20 + 4096*255: bytes.Repeat([]byte{9}, ramPage),
	}
	for off, p := range pages {
		ram.WriteAt(p, off)
	}
	ram.WriteAt(make([]byte, 4*ramPage), 20<<20) // touched, but zero
	out, err := os.Create(filepath.Join(t.TempDir(), "mem"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	crc, n, err := copyPages(ram, 0, out, memHeaderLen, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if n != 5*ramPage {
		t.Errorf("copied %d bytes, want the 5 non-zero pages", n)
	}
	back, _ := newGuestRAM(64)
	defer back.Close()
	crc2, n2, err := copyPages(out, memHeaderLen, back, 0, 64<<20)
	if err != nil || crc2 != crc || n2 != n {
		t.Fatalf("back: crc %x/%x, %d/%d bytes, %v", crc2, crc, n2, n, err)
	}
	for off, p := range pages {
		got := make([]byte, len(p))
		back.ReadAt(got, off)
		if !bytes.Equal(got, p) {
			t.Errorf("page at %d did not come back", off)
		}
	}
	// The image holds data only where pages were copied.
	var extents int64
	dataExtents(out, memHeaderLen, memHeaderLen+64<<20, func(a, b int64) error { extents += b - a; return nil })
	if extents > 64<<10 {
		t.Errorf("the image has %d bytes of data for 5 pages: zero pages were written", extents)
	}
}
