package qemuvmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"

	"golang.org/x/sys/unix"
)

// Guest memory lives in a memfd the VMM creates and QEMU maps shared
// (memory-backend-file on /dev/fd/N, share=on). A snapshot then has QEMU
// migrate only the device state (capability x-ignore-shared), and the
// VMM copies the memory itself, visiting only the pages the guest has
// touched (SEEK_DATA/SEEK_HOLE) and leaving zero pages out. Reading the
// whole of a guest's memory, as QEMU's own RAM migration does, makes the
// kernel allocate and clear every page never touched, which costs
// seconds per GiB on hosts like this project's (nested, PVM); the memfd's
// holes cost nothing.

const ramPage = 4096

// newGuestRAM returns a memfd of memMiB MiB for the guest's memory.
func newGuestRAM(memMiB int) (*os.File, error) {
	fd, err := unix.MemfdCreate("banger-vmm-ram", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("guest memory: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:banger-vmm-ram")
	if err := f.Truncate(int64(memMiB) << 20); err != nil {
		f.Close()
		return nil, fmt.Errorf("guest memory: size %d MiB: %w", memMiB, err)
	}
	return f, nil
}

// dataExtents calls fn with each data extent of f within [off, end), as
// SEEK_DATA and SEEK_HOLE report them (a file system without them reports
// the whole range as data).
func dataExtents(f *os.File, off, end int64, fn func(start, stop int64) error) error {
	fd := int(f.Fd())
	for off < end {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data after off
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		if start >= end {
			return nil
		}
		stop, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		stop = min(stop, end)
		if err := fn(start, stop); err != nil {
			return err
		}
		off = stop
	}
	return nil
}

var zeroPage = make([]byte, ramPage)

// copyPages copies the non-zero pages of src's [srcOff, srcOff+size) to
// dst at dstOff plus the same offset, leaving zero pages as holes, and
// returns the CRC-32C of every copied page with its offset, so that a
// load can check it copied back exactly what was saved.
func copyPages(src *os.File, srcOff int64, dst *os.File, dstOff, size int64) (uint32, int64, error) {
	var crc uint32
	var copied int64
	buf := make([]byte, 1<<20)
	var hdr [8]byte
	err := dataExtents(src, srcOff, srcOff+size, func(start, stop int64) error {
		// Extents are page aligned on the file systems used here; align
		// down anyway, so a page is never split.
		start -= (start - srcOff) % ramPage
		for off := start; off < stop; {
			n := min(int64(len(buf)), stop-off)
			n += (ramPage - n%ramPage) % ramPage
			chunk := buf[:n]
			got, err := src.ReadAt(chunk, off)
			if got < len(chunk) {
				clear(chunk[got:])
				if got == 0 && err != nil {
					return fmt.Errorf("read memory at %d: %w", off, err)
				}
			}
			for p := 0; p < len(chunk); p += ramPage {
				page := chunk[p : p+ramPage]
				if bytes.Equal(page, zeroPage) {
					continue
				}
				rel := off + int64(p) - srcOff
				if rel >= size {
					break
				}
				if _, err := dst.WriteAt(page, dstOff+rel); err != nil {
					return fmt.Errorf("write memory at %d: %w", rel, err)
				}
				binary.LittleEndian.PutUint64(hdr[:], uint64(rel))
				crc = crc32.Update(crc, crc32c, hdr[:])
				crc = crc32.Update(crc, crc32c, page)
				copied += ramPage
			}
			off += n
		}
		return nil
	})
	return crc, copied, err
}
