package image

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// testNote is one ELF note for writeTestELF.
type testNote struct {
	name string
	typ  uint32
	desc []byte
}

// writeTestELF writes a minimal x86_64 ELF file with one PT_NOTE segment
// holding notes.
func writeTestELF(t *testing.T, path string, notes ...testNote) {
	t.Helper()
	var seg bytes.Buffer
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	for _, n := range notes {
		name := append([]byte(n.name), 0)
		_ = binary.Write(&seg, binary.LittleEndian, [3]uint32{uint32(len(name)), uint32(len(n.desc)), n.typ})
		seg.Write(pad(name))
		seg.Write(pad(append([]byte(nil), n.desc...)))
	}
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	le := binary.LittleEndian
	_ = binary.Write(&b, le, uint16(2))  // e_type: EXEC
	_ = binary.Write(&b, le, uint16(62)) // e_machine: x86_64
	_ = binary.Write(&b, le, uint32(1))  // e_version
	_ = binary.Write(&b, le, uint64(0))  // e_entry
	_ = binary.Write(&b, le, uint64(64)) // e_phoff
	_ = binary.Write(&b, le, uint64(0))  // e_shoff
	_ = binary.Write(&b, le, uint32(0))  // e_flags
	_ = binary.Write(&b, le, [6]uint16{64, 56, 1, 64, 0, 0})
	_ = binary.Write(&b, le, [2]uint32{4, 4}) // PT_NOTE, PF_R
	_ = binary.Write(&b, le, [6]uint64{120, 0, 0, uint64(seg.Len()), uint64(seg.Len()), 4})
	b.Write(seg.Bytes())
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

var pvhNote = testNote{name: "Xen", typ: 18, desc: []byte{0, 0, 0, 1}}

func TestKernelFormat(t *testing.T) {
	dir := t.TempDir()
	elfPath := filepath.Join(dir, "vmlinux")
	writeTestELF(t, elfPath, pvhNote)
	bz := make([]byte, 0x400)
	copy(bz[0x202:], "HdrS")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		path string
		want string
	}{
		{"elf", elfPath, FormatELF},
		{"bzimage", write("bzImage", bz), FormatBzImage},
		{"gzip", write("vmlinuz.gz", []byte{0x1f, 0x8b, 8, 0}), FormatUnknown},
		{"empty", write("empty", nil), FormatUnknown},
		{"hdrs too early", write("short", []byte("HdrS")), FormatUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := KernelFormat(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("KernelFormat = %q, want %q", got, tt.want)
			}
		})
	}
	if _, err := KernelFormat(filepath.Join(dir, "missing")); err == nil {
		t.Error("KernelFormat(missing) = nil error")
	}
}

func TestHasPVHNote(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		notes []testNote
		want  bool
	}{
		{"pvh", []testNote{{name: "GNU", typ: 3, desc: []byte("buildid0")}, pvhNote}, true},
		{"xen notes without pvh entry", []testNote{{name: "Xen", typ: 6, desc: []byte("linux\x00")}}, false},
		{"type 18 of another owner", []testNote{{name: "GNU", typ: 18, desc: []byte{1, 2, 3, 4}}}, false},
		{"no notes", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name)
			writeTestELF(t, p, tt.notes...)
			got, err := HasPVHNote(p)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("HasPVHNote = %t, want %t", got, tt.want)
			}
		})
	}
	notELF := filepath.Join(dir, "text")
	if err := os.WriteFile(notELF, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := HasPVHNote(notELF); err == nil {
		t.Error("HasPVHNote(text file) = nil error")
	}
}
