package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/model"
	"banger/internal/oci"
)

// recordingSteps is a stepRunner that records each step and runs none.
type recordingSteps struct{ argvs [][]string }

func (r *recordingSteps) RunStep(ctx context.Context, log *os.File, s step) error {
	r.argvs = append(r.argvs, s.Argv)
	return nil
}

// staticELF writes the header of a static x86-64 executable: enough for
// readStaticBinary and KernelFormat.
func staticELF(t *testing.T, path string) {
	t.Helper()
	h := make([]byte, 64)
	copy(h, "\x7fELF\x02\x01\x01")
	binary.LittleEndian.PutUint16(h[16:], 2)    // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], 0x3e) // EM_X86_64
	binary.LittleEndian.PutUint32(h[20:], 1)    // EV_CURRENT
	binary.LittleEndian.PutUint16(h[52:], 64)   // e_ehsize
	binary.LittleEndian.PutUint16(h[54:], 56)   // e_phentsize
	binary.LittleEndian.PutUint16(h[58:], 64)   // e_shentsize
	if err := os.WriteFile(path, h, 0o755); err != nil {
		t.Fatal(err)
	}
}

// tarEntry is one entry of a test layer.
type tarEntry struct {
	name, data, link string
	typ              byte
	mode             int64
}

func layer(t *testing.T, es ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Size: int64(len(e.data))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.data))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name, data string) tarEntry {
	return tarEntry{name: name, data: data, typ: tar.TypeReg, mode: 0o755}
}
func dirEnt(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
func link(name, target string) tarEntry {
	return tarEntry{name: name, link: target, typ: tar.TypeSymlink, mode: 0o777}
}

// unpackLayers is an ImportOptions.Unpack applying layers in order with
// the real applier.
func unpackLayers(layers ...[]byte) func(ctx context.Context, root string) error {
	return func(ctx context.Context, root string) error {
		a, err := oci.OpenApplier(root)
		if err != nil {
			return err
		}
		defer a.Close()
		for _, l := range layers {
			if err := a.Apply(ctx, bytes.NewReader(l)); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestImportRefusalsLeaveNothing: hostile layers (a .. escape, a write
// through an absolute symbolic link, a corrupt stream) and images banger
// cannot boot are refused with EINVALID and a message saying what is
// wrong; no image directory, temporary directory, log or cache entry is
// left, nothing outside the tree changes, and no host command ran.
func TestImportRefusalsLeaveNothing(t *testing.T) {
	base := []tarEntry{dirEnt("bin/"), dirEnt("etc/"), reg("bin/sh", "#!"), reg("etc/passwd", "root:x:0:0::/root:/bin/sh\n")}
	for _, tc := range []struct {
		name   string
		layers func(outside string) [][]byte
		want   string
	}{
		{"dotdot", func(string) [][]byte {
			return [][]byte{layer(t, base...), layer(t, reg("../../outside/pwned", "x"))}
		}, "climbs out"},
		{"absolute-symlink-followed", func(outside string) [][]byte {
			return [][]byte{layer(t, append(base, link("usr", outside))...), layer(t, reg("usr/pwned", "x"))}
		}, "symbolic link"},
		{"corrupt-layer", func(string) [][]byte {
			l := layer(t, append(base, reg("big", strings.Repeat("x", 8192)))...)
			return [][]byte{l[:len(l)/2]}
		}, "layer"},
		{"not-a-layer", func(string) [][]byte {
			return [][]byte{bytes.Repeat([]byte("not a tar "), 200)}
		}, "not a tar stream"},
		{"no-shell", func(string) [][]byte {
			return [][]byte{layer(t, dirEnt("etc/"), reg("etc/passwd", "root:x:0:0::/root:/bin/sh\n"))}
		}, "no /bin/sh"},
		{"no-root-account", func(string) [][]byte {
			return [][]byte{layer(t, dirEnt("bin/"), dirEnt("etc/"), reg("bin/sh", "#!"), reg("etc/passwd", "app:x:1000:1000::/home/app:/bin/sh\n"))}
		}, "no root account"},
		{"no-sshd-no-package-manager", func(string) [][]byte {
			return [][]byte{layer(t, base...)}
		}, "no SSH server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			outside := filepath.Join(dir, "outside")
			os.Mkdir(outside, 0o755)
			kernel, initBin := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "banger-init")
			staticELF(t, kernel)
			staticELF(t, initBin)
			pub, _, err := EnsureSSHKey(filepath.Join(dir, "key"))
			if err != nil {
				t.Fatal(err)
			}
			images, cache := filepath.Join(dir, "images"), filepath.Join(dir, "cache")
			steps := &recordingSteps{}
			_, err = importImage(context.Background(), steps, func(string) bool { return true }, ImportOptions{
				Name: "bad", OutDir: filepath.Join(images, "x"), CacheDir: cache, CacheKey: "k",
				Unpack: unpackLayers(tc.layers(outside)...), InitPath: initBin, KernelPath: kernel, SSHPublicKey: pub,
			}, func(string, string) {})
			if err == nil {
				t.Fatal("imported; want a refusal")
			}
			if model.ErrorCode(err) != model.EINVALID || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q (%s): want EINVALID saying %q", err, model.ErrorCode(err), tc.want)
			}
			if len(steps.argvs) > 0 {
				t.Errorf("ran host commands: %q", steps.argvs)
			}
			for _, d := range []string{images, outside} {
				if es, _ := os.ReadDir(d); len(es) > 0 {
					t.Errorf("%s holds %v after the refusal", d, es)
				}
			}
			if m, _ := filepath.Glob(filepath.Join(cache, "oci-*.tar*")); len(m) > 0 {
				t.Errorf("cache holds %v after the refusal", m)
			}
		})
	}
}
