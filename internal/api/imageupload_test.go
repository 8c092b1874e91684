package api

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"banger/internal/model"
)

// sparseFile writes a file of size bytes with data at the given offsets
// and holes elsewhere.
func sparseFile(t *testing.T, size int64, data map[int64][]byte) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "src"))
	if err != nil {
		t.Fatal(err)
	}
	for off, b := range data {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFilePartsRoundTrip(t *testing.T) {
	ctx := context.Background()
	a := sparseFile(t, 64<<20, map[int64][]byte{
		0:        []byte("\x7fELF header"),
		5 << 20:  bytes.Repeat([]byte("x"), 3<<20), // spans 1 MiB read chunks
		40 << 20: append(make([]byte, 8192), 'z'),  // zero blocks inside data
	})
	b := sparseFile(t, 10, map[int64][]byte{0: []byte("0123456789")})
	empty := sparseFile(t, 0, nil)
	var wire bytes.Buffer
	for _, p := range []struct {
		role string
		f    *os.File
	}{{RoleRootfs, a}, {RoleKernel, b}, {RoleInitrd, empty}} {
		if err := WriteFilePart(ctx, &wire, p.role, p.f); err != nil {
			t.Fatal(err)
		}
	}
	// Only data travels: the 64 MiB file costs about its 3 MiB.
	if wire.Len() > 4<<20 {
		t.Errorf("wire holds %d bytes; the holes and zero blocks went too", wire.Len())
	}
	pr := NewPartReader(&wire)
	var roles []string
	for {
		h, err := pr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		roles = append(roles, h.Role)
		dst, err := os.Create(filepath.Join(t.TempDir(), h.Role))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pr.CopyTo(ctx, dst, h); err != nil {
			t.Fatal(err)
		}
		src := map[string]*os.File{RoleRootfs: a, RoleKernel: b, RoleInitrd: empty}[h.Role]
		want, _ := os.ReadFile(src.Name())
		got, _ := os.ReadFile(dst.Name())
		if !bytes.Equal(got, want) {
			t.Errorf("%s: received %d bytes differ from the %d sent", h.Role, len(got), len(want))
		}
		var st syscall.Stat_t
		dst.Close()
		syscall.Stat(dst.Name(), &st)
		if h.Role == RoleRootfs && st.Blocks*512 > 8<<20 {
			t.Errorf("rootfs copy allocates %d bytes; want it sparse", st.Blocks*512)
		}
	}
	if !reflect.DeepEqual(roles, []string{RoleRootfs, RoleKernel, RoleInitrd}) {
		t.Errorf("roles %v", roles)
	}
}

// extent encodes one extent record.
func extent(off, n int64, data string) string {
	var h [16]byte
	binary.BigEndian.PutUint64(h[:8], uint64(off))
	binary.BigEndian.PutUint64(h[8:], uint64(n))
	return string(h[:]) + data
}

func TestFilePartsHostile(t *testing.T) {
	end := extent(0, 0, "")
	tests := []struct {
		name   string
		stream string
		code   string // "" for a broken stream (no domain code)
	}{
		{"header too long", `{"role":"` + strings.Repeat("k", 2000) + `","size":1}` + "\n", model.EINVALID},
		{"header without end", `{"role":"kernel","size":1}`, ""},
		{"unknown field", `{"role":"kernel","size":1,"path":"/etc/shadow"}` + "\n" + end, model.EINVALID},
		{"not json", "kernel 10\n" + end, model.EINVALID},
		{"negative size", `{"role":"kernel","size":-1}` + "\n" + end, model.EINVALID},
		{"extent past the size", `{"role":"kernel","size":4}` + "\n" + extent(2, 4, "abcd") + end, model.EINVALID},
		{"extent at a huge offset", `{"role":"kernel","size":4}` + "\n" + extent(1<<62, 1, "a") + end, model.EINVALID},
		{"negative length", `{"role":"kernel","size":4}` + "\n" + extent(0, -5, "") + end, model.EINVALID},
		{"overlap", `{"role":"kernel","size":8}` + "\n" + extent(0, 4, "abcd") + extent(2, 2, "xy") + end, model.EINVALID},
		{"out of order", `{"role":"kernel","size":8}` + "\n" + extent(4, 2, "ab") + extent(0, 2, "xy") + end, model.EINVALID},
		{"cut in an extent", `{"role":"kernel","size":8}` + "\n" + extent(0, 8, "abc"), ""},
		{"cut before the end", `{"role":"kernel","size":8}` + "\n" + extent(0, 2, "ab"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr := NewPartReader(strings.NewReader(tt.stream))
			h, err := pr.Next()
			if err == nil {
				dst, ferr := os.Create(filepath.Join(t.TempDir(), "dst"))
				if ferr != nil {
					t.Fatal(ferr)
				}
				defer dst.Close()
				_, err = pr.CopyTo(context.Background(), dst, h)
				if fi, _ := dst.Stat(); err != nil && fi.Size() > 8 {
					t.Errorf("a refused part grew the file to %d bytes", fi.Size())
				}
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.code != "" && model.ErrorCode(err) != tt.code {
				t.Errorf("code %q (%v); want %s", model.ErrorCode(err), err, tt.code)
			}
			if tt.code == "" && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("a cut stream gave %v; want ErrUnexpectedEOF", err)
			}
		})
	}
}

func TestImageUploadQueries(t *testing.T) {
	up := ImageUploadRequest{Name: "mine", Docker: true}
	got, err := ParseImageUploadRequest(up.Query())
	if err != nil || got != up {
		t.Errorf("upload request round trip: %+v %v", got, err)
	}
	b := ImageBuildRequest{Name: "dev", Release: "bookworm", Mirror: "http://deb.example/debian", Packages: []string{"jq", "curl"}, Docker: true, SizeBytes: 4 << 30}
	gotB, err := ParseImageBuildQuery(b.BuildQuery())
	if err != nil || !reflect.DeepEqual(gotB, b) {
		t.Errorf("build request round trip: %+v %v", gotB, err)
	}
	for _, q := range []url.Values{
		{"name": {"a"}, "kernel_path": {"/etc/shadow"}},
		{"name": {"a", "b"}},
		{"size_bytes": {"lots"}},
	} {
		if _, err := ParseImageBuildQuery(q); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("build query %v: %v", q, err)
		}
	}
	if _, err := ParseImageUploadRequest(url.Values{"name": {"a"}, "rootfs_path": {"/x"}}); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("upload query with a path: %v", err)
	}
}
