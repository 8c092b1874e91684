package qemuvmm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// An ELF kernel (vmlinux) is booted through PVH by its program headers:
// QEMU loads each PT_LOAD segment and finds the PVH entry in a PT_NOTE.
// What follows the segments in the file (the symbol and string tables,
// the section headers: a third of a 44 MB vmlinux) is never loaded, yet
// QEMU reads the symbol table and sorts it at every start, which costs
// more CPU than the rest of its start-up together. The copy QEMU boots
// (copyForQEMU) therefore stops after the last segment and says the file
// has no section headers.

// ELF64 header offsets and values this file reads or writes.
const (
	elfHeaderSize64 = 64
	elfOffShoff     = 0x28 // e_shoff, 8 bytes
	elfOffPhoff     = 0x20 // e_phoff, 8 bytes
	elfOffPhentsize = 0x36 // e_phentsize, 2 bytes
	elfOffPhnum     = 0x38 // e_phnum, 2 bytes
	elfOffShnum     = 0x3c // e_shnum, 2 bytes
	elfOffShstrndx  = 0x3e // e_shstrndx, 2 bytes
	elfPhdrSize64   = 56
	// elfMaxPhnum bounds the program headers read; vmlinux has five.
	elfMaxPhnum = 64
)

// loadableELFEnd returns the length of the leading part of an ELF64
// little-endian file that holds its header, its program headers and the
// file content of every segment: all a loader that goes by program
// headers reads. ok is false for anything else (ELF32, big-endian,
// headers out of bounds, nothing to cut), which is copied whole.
func loadableELFEnd(r io.ReaderAt, size int64) (end int64, ok bool) {
	var h [elfHeaderSize64]byte
	if size < elfHeaderSize64 {
		return 0, false
	}
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return 0, false
	}
	if !bytes.Equal(h[:4], []byte("\x7fELF")) || h[4] != 2 || h[5] != 1 {
		return 0, false // not ELF, not 64-bit, or not little-endian
	}
	le := binary.LittleEndian
	phoff := le.Uint64(h[elfOffPhoff:])
	phentsize := le.Uint16(h[elfOffPhentsize:])
	phnum := le.Uint16(h[elfOffPhnum:])
	if phnum == 0 || phnum > elfMaxPhnum || phentsize < elfPhdrSize64 || phoff < elfHeaderSize64 || phoff > uint64(size) {
		return 0, false
	}
	tableEnd := phoff + uint64(phnum)*uint64(phentsize)
	if tableEnd > uint64(size) {
		return 0, false
	}
	end = int64(tableEnd)
	ph := make([]byte, elfPhdrSize64)
	for i := uint64(0); i < uint64(phnum); i++ {
		if _, err := r.ReadAt(ph, int64(phoff+i*uint64(phentsize))); err != nil {
			return 0, false
		}
		off, filesz := le.Uint64(ph[8:]), le.Uint64(ph[32:])
		if off > uint64(size) || filesz > uint64(size)-off {
			return 0, false // a segment beyond the file: leave it to QEMU to refuse
		}
		end = max(end, int64(off+filesz))
	}
	if end >= size {
		return 0, false
	}
	return end, true
}

// trimELF makes dst, a copy of an ELF64 file cut at loadableELFEnd, a
// valid ELF without section headers: e_shoff, e_shnum and e_shstrndx are
// zeroed.
func trimELF(dst *os.File) error {
	var zero [8]byte
	for _, f := range []struct {
		off int64
		n   int
	}{{elfOffShoff, 8}, {elfOffShnum, 2}, {elfOffShstrndx, 2}} {
		if _, err := dst.WriteAt(zero[:f.n], f.off); err != nil {
			return fmt.Errorf("trim elf: %w", err)
		}
	}
	return nil
}
