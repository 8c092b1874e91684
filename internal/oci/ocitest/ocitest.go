// Package ocitest writes container images for tests: OCI archives, OCI
// layout directories and docker save archives, from layer tars on disk,
// as the tools that make them do (so the tests need no registry and no
// container engine).
package ocitest

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
)

// Layer is one layer: an uncompressed tar file, stored compressed or not.
type Layer struct {
	Path string
	// Compress is "gzip", "zstd" or "" (stored as it is).
	Compress string
}

// Options shape the image.
type Options struct {
	Env        []string
	WorkingDir string
	User       string
	Cmd        []string
	// Architecture defaults to amd64.
	Architecture string
	// CorruptLayer, from 1, flips a byte in that layer's blob after its
	// digest is taken.
	CorruptLayer int
	// RefName annotates the manifest in index.json.
	RefName string
}

type blob struct {
	path   string
	digest string
	size   int64
}

// image is an image's blobs, made in a work dir.
type image struct {
	layers   []blob
	diffIDs  []string
	config   blob
	manifest blob
	media    []string
}

func fileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, err
}

func writeBlob(dir string, data []byte) (blob, error) {
	sum := sha256.Sum256(data)
	p := filepath.Join(dir, hex.EncodeToString(sum[:]))
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return blob{}, err
	}
	return blob{path: p, digest: "sha256:" + hex.EncodeToString(sum[:]), size: int64(len(data))}, nil
}

func compress(src, dst, how string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	var w io.WriteCloser
	switch how {
	case "gzip":
		w, _ = gzip.NewWriterLevel(out, gzip.BestSpeed)
	case "zstd":
		w, err = zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("compression %q", how)
	}
	if _, err := io.Copy(w, in); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return out.Close()
}

func flipByte(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, _ := f.Stat()
	off := fi.Size() / 2
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	return err
}

// build makes the blobs of an image in work.
func build(work string, layers []Layer, opts Options, oci bool) (*image, error) {
	img := &image{}
	for i, l := range layers {
		diffID, _, err := fileDigest(l.Path)
		if err != nil {
			return nil, err
		}
		img.diffIDs = append(img.diffIDs, diffID)
		p := l.Path
		media := "application/vnd.oci.image.layer.v1.tar"
		if !oci {
			media = "application/vnd.docker.image.rootfs.diff.tar"
		}
		if l.Compress != "" {
			p = filepath.Join(work, fmt.Sprintf("layer%d.%s", i, l.Compress))
			if err := compress(l.Path, p, l.Compress); err != nil {
				return nil, err
			}
			media += "+" + l.Compress
		}
		d, n, err := fileDigest(p)
		if err != nil {
			return nil, err
		}
		if opts.CorruptLayer == i+1 {
			c := filepath.Join(work, fmt.Sprintf("layer%d.corrupt", i))
			if err := copyFile(p, c); err != nil {
				return nil, err
			}
			if err := flipByte(c); err != nil {
				return nil, err
			}
			p = c
		}
		img.layers = append(img.layers, blob{path: p, digest: d, size: n})
		img.media = append(img.media, media)
	}
	arch := opts.Architecture
	if arch == "" {
		arch = "amd64"
	}
	cfg := map[string]any{
		"architecture": arch, "os": "linux",
		"config": map[string]any{"Env": opts.Env, "WorkingDir": opts.WorkingDir, "User": opts.User, "Cmd": opts.Cmd},
		"rootfs": map[string]any{"type": "layers", "diff_ids": img.diffIDs},
	}
	raw, _ := json.Marshal(cfg)
	var err error
	if img.config, err = writeBlob(work, raw); err != nil {
		return nil, err
	}
	cfgMedia, layerList := "application/vnd.oci.image.config.v1+json", []map[string]any{}
	manMedia := "application/vnd.oci.image.manifest.v1+json"
	if !oci {
		cfgMedia, manMedia = "application/vnd.docker.container.image.v1+json", "application/vnd.docker.distribution.manifest.v2+json"
	}
	for i, l := range img.layers {
		layerList = append(layerList, map[string]any{"mediaType": img.media[i], "digest": l.digest, "size": l.size})
	}
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": manMedia,
		"config": map[string]any{"mediaType": cfgMedia, "digest": img.config.digest, "size": img.config.size},
		"layers": layerList,
	})
	if img.manifest, err = writeBlob(work, man); err != nil {
		return nil, err
	}
	return img, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (img *image) index(opts Options) []byte {
	desc := map[string]any{
		"mediaType": "application/vnd.oci.image.manifest.v1+json",
		"digest":    img.manifest.digest, "size": img.manifest.size,
		"platform": map[string]string{"os": "linux", "architecture": "amd64"},
	}
	if opts.RefName != "" {
		desc["annotations"] = map[string]string{"org.opencontainers.image.ref.name": opts.RefName}
	}
	b, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{desc}})
	return b
}

// tarWriter adds files and blobs to an archive.
type tarWriter struct{ tw *tar.Writer }

func (t tarWriter) bytes(name string, b []byte) error {
	if err := t.tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := t.tw.Write(b)
	return err
}

func (t tarWriter) file(name, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, _ := f.Stat()
	if err := t.tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: fi.Size(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err = io.Copy(t.tw, f)
	return err
}

func hexOf(digest string) string { return digest[len("sha256:"):] }

// OCIArchive writes an OCI archive (an OCI layout in a tar, as
// `skopeo copy ... oci-archive:` makes) to out and returns the
// manifest's digest.
func OCIArchive(out string, layers []Layer, opts Options) (string, error) {
	work, err := os.MkdirTemp(filepath.Dir(out), ".ocitest-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	img, err := build(work, layers, opts, true)
	if err != nil {
		return "", err
	}
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	t := tarWriter{tw}
	if err := t.bytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return "", err
	}
	if err := t.bytes("index.json", img.index(opts)); err != nil {
		return "", err
	}
	for _, b := range append([]blob{img.manifest, img.config}, img.layers...) {
		if err := t.file("blobs/sha256/"+hexOf(b.digest), b.path); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	return img.manifest.digest, f.Close()
}

// Layout writes an OCI layout directory at dir (which must not exist)
// and returns the manifest's digest.
func Layout(dir string, layers []Layer, opts Options) (string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(dir, ".ocitest-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	img, err := build(work, layers, opts, true)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), img.index(opts), 0o644); err != nil {
		return "", err
	}
	for _, b := range append([]blob{img.manifest, img.config}, img.layers...) {
		if err := copyFile(b.path, filepath.Join(dir, "blobs", "sha256", hexOf(b.digest))); err != nil {
			return "", err
		}
	}
	return img.manifest.digest, nil
}

// DockerArchive writes a `docker save` archive (the classic format:
// manifest.json, <id>.json, <layer id>/layer.tar) to out. Layers are
// stored uncompressed, as docker does.
func DockerArchive(out string, layers []Layer, opts Options, repoTag string) error {
	work, err := os.MkdirTemp(filepath.Dir(out), ".ocitest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	plain := make([]Layer, len(layers))
	for i, l := range layers {
		plain[i] = Layer{Path: l.Path}
	}
	img, err := build(work, plain, opts, false)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	t := tarWriter{tw}
	cfgName := hexOf(img.config.digest) + ".json"
	var layerNames []string
	for i, l := range img.layers {
		name := fmt.Sprintf("%x/layer.tar", sha256.Sum256([]byte(fmt.Sprint(i, l.digest))))
		layerNames = append(layerNames, name)
		if err := t.file(name, l.path); err != nil {
			return err
		}
	}
	if err := t.file(cfgName, img.config.path); err != nil {
		return err
	}
	man, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{repoTag}, "Layers": layerNames}})
	if err := t.bytes("manifest.json", man); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}
