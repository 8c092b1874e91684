package image

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
)

// Kernel image formats reported by KernelFormat.
const (
	FormatELF     = "elf"
	FormatBzImage = "bzimage"
	FormatUnknown = "unknown"
)

// KernelFormat tells an uncompressed ELF vmlinux ("elf", the only format
// Firecracker boots on x86_64) from a bzImage ("bzimage": the "HdrS" boot
// protocol magic at offset 0x202) and anything else ("unknown").
func KernelFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("kernel format: %w", err)
	}
	defer f.Close()
	head := make([]byte, 0x206)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("kernel format %s: %w", path, err)
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return FormatELF, nil
	case len(head) >= 0x206 && string(head[0x202:0x206]) == "HdrS":
		return FormatBzImage, nil
	}
	return FormatUnknown, nil
}

// HasPVHNote reports whether the ELF kernel at path carries the Xen PVH
// entry note (XEN_ELFNOTE_PHYS32_ENTRY, type 18, name "Xen"), which
// Firecracker (v1.12+) and QEMU's microvm machine boot directly.
func HasPVHNote(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("read elf notes: %w", err)
	}
	defer f.Close()
	const xenElfnotePhys32Entry = 18
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return false, fmt.Errorf("read elf notes %s: %w", path, err)
		}
		for _, n := range parseNotes(data, f.ByteOrder) {
			if n.name == "Xen" && n.typ == xenElfnotePhys32Entry {
				return true, nil
			}
		}
	}
	return false, nil
}

type elfNote struct {
	name string
	typ  uint32
}

// parseNotes splits a PT_NOTE segment into its notes: namesz, descsz and
// type words, then the name and the descriptor, each padded to 4 bytes.
func parseNotes(data []byte, order interface{ Uint32([]byte) uint32 }) []elfNote {
	var out []elfNote
	align := func(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, typ := order.Uint32(data[0:4]), order.Uint32(data[4:8]), order.Uint32(data[8:12])
		data = data[12:]
		if align(namesz)+align(descsz) > uint64(len(data)) {
			break
		}
		name := string(bytes.TrimRight(data[:namesz], "\x00"))
		out = append(out, elfNote{name: name, typ: typ})
		data = data[align(namesz)+align(descsz):]
	}
	return out
}
