package oci

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// Kinds of image sources (model.ImageSource.Kind).
const (
	KindRegistry      = "registry"
	KindOCIArchive    = "oci-archive"
	KindDockerArchive = "docker-archive"
	KindOCILayout     = "oci-layout"
	KindDockerfile    = "dockerfile"
)

// fileStore reads the files of an image archive or layout by name.
type fileStore interface {
	// open returns the file and its size, or an error wrapping
	// fs.ErrNotExist.
	open(name string) (io.ReadCloser, int64, error)
}

// tarStore reads the regular files of an uncompressed tar in place.
type tarStore struct {
	f     *os.File
	files map[string]tarFile
}

type tarFile struct{ off, size int64 }

// newTarStore indexes the regular files of the tar in f.
func newTarStore(f *os.File) (*tarStore, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	s := &tarStore{f: f, files: map[string]tarFile{}}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, model.Errorf(model.EINVALID, "not an image archive: not a tar file, or a broken one (%v)", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name, err := cleanName(hdr.Name)
		if err != nil || name == "" {
			continue
		}
		// archive/tar reads headers without buffering ahead, so the
		// file's offset is where this entry's data starts.
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		s.files[name] = tarFile{off: off, size: hdr.Size}
	}
	return s, nil
}

func (s *tarStore) open(name string) (io.ReadCloser, int64, error) {
	tf, ok := s.files[name]
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	return io.NopCloser(io.NewSectionReader(s.f, tf.off, tf.size)), tf.size, nil
}

// dirStore reads an OCI layout directory the daemon received: only
// regular files beneath it, never through a link.
type dirStore struct {
	fd int
}

func (s *dirStore) open(name string) (io.ReadCloser, int64, error) {
	fd, err := unix.Openat2(s.fd, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		return nil, 0, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, model.Errorf(model.EINVALID, "%s: not a regular file", name)
	}
	return f, fi.Size(), nil
}

// OpenArchive reads an image from the tar in f: an OCI archive (an OCI
// layout in a tar) or a docker save archive. It returns the image and
// the archive's kind. f stays open for the layers: close it after.
func OpenArchive(f *os.File) (*Image, string, error) {
	s, err := newTarStore(f)
	if err != nil {
		return nil, "", err
	}
	return openStore(s, KindOCIArchive)
}

// OpenLayout reads an image from an OCI layout directory. The returned
// close releases the directory after the layers were read.
func OpenLayout(dir string) (*Image, func(), error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open layout %s: %w", dir, err)
	}
	img, _, err := openStore(&dirStore{fd: fd}, KindOCILayout)
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	return img, func() { unix.Close(fd) }, nil
}

// openStore reads an OCI layout (index.json) or, failing that, a docker
// save archive (manifest.json). Archives from Docker 25 and later are
// both; the OCI side is read, whose blobs are named by digest.
func openStore(s fileStore, ociKind string) (*Image, string, error) {
	if raw, err := readFile(s, "index.json", maxManifestSize); err == nil {
		img, err := openOCI(s, raw)
		return img, ociKind, err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	if raw, err := readFile(s, "manifest.json", maxManifestSize); err == nil {
		img, err := openDocker(s, raw)
		return img, KindDockerArchive, err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	return nil, "", model.Errorf(model.EINVALID, "not a container image: no index.json (an OCI archive or layout) and no manifest.json (a docker save archive)")
}

// readFile reads a named file of at most limit bytes.
func readFile(s fileStore, name string, limit int64) ([]byte, error) {
	r, size, err := s.open(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if size > limit {
		return nil, model.Errorf(model.EINVALID, "%s is %d bytes, over the %d banger reads", name, size, limit)
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, model.Errorf(model.EINVALID, "%s is over the %d bytes banger reads", name, limit)
	}
	return b, nil
}

func blobName(digest string) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:")
}

// readBlob reads a small blob (a manifest, a config) and checks its
// digest and size.
func readBlob(s fileStore, d descriptor, limit int64, what string) ([]byte, error) {
	if err := checkDigest(what, d.Digest); err != nil {
		return nil, err
	}
	b, err := readFile(s, blobName(d.Digest), limit)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, model.Errorf(model.EINVALID, "%s %s is missing from the image", what, d.Digest)
	}
	if err != nil {
		return nil, err
	}
	if got := sha256Digest(b); got != d.Digest {
		return nil, model.Errorf(model.EINVALID, "%s is corrupt: its digest is %s, not %s", what, got, d.Digest)
	}
	if d.Size != 0 && int64(len(b)) != d.Size {
		return nil, model.Errorf(model.EINVALID, "%s is corrupt: %d bytes, not %d", what, len(b), d.Size)
	}
	return b, nil
}

// openOCI picks the one linux/amd64 image of an OCI index and reads it.
func openOCI(s fileStore, raw []byte) (*Image, error) {
	var idx index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, model.Errorf(model.EINVALID, "index.json: not JSON: %v", err)
	}
	var found []descriptor
	var others []string
	if err := collectManifests(s, idx, 0, &found, &others); err != nil {
		return nil, err
	}
	switch len(found) {
	case 0:
		if len(others) > 0 {
			return nil, model.Errorf(model.EINVALID, "the image has no linux/amd64 variant (it has %s)", strings.Join(others, ", "))
		}
		return nil, model.Errorf(model.EINVALID, "not a container image: index.json lists no image manifest")
	case 1:
	default:
		var names []string
		for _, d := range found {
			n := d.Annotations["org.opencontainers.image.ref.name"]
			if n == "" {
				n = d.Annotations["io.containerd.image.name"]
			}
			if n == "" {
				n = d.Digest
			}
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, model.Errorf(model.EINVALID, "the archive holds %d images (%s); banger imports one: save only the one you want", len(found), strings.Join(names, ", "))
	}
	return loadManifest(s, found[0])
}

// collectManifests finds the image manifests of idx that run on
// linux/amd64, following nested indexes a few levels deep.
func collectManifests(s fileStore, idx index, depth int, found *[]descriptor, others *[]string) error {
	if depth > 3 {
		return model.Errorf(model.EINVALID, "image indexes nested too deep")
	}
	for _, d := range idx.Manifests {
		switch d.MediaType {
		case mtOCIIndex, mtDockerList:
			raw, err := readBlob(s, d, maxManifestSize, "image index")
			if err != nil {
				return err
			}
			var sub index
			if err := json.Unmarshal(raw, &sub); err != nil {
				return model.Errorf(model.EINVALID, "image index %s: not JSON: %v", d.Digest, err)
			}
			if err := collectManifests(s, sub, depth+1, found, others); err != nil {
				return err
			}
		case mtOCIManifest, mtDockerManifest:
			p := d.Platform
			if p == nil || p.OS == "linux" && p.Architecture == "amd64" {
				*found = append(*found, d)
			} else if p.OS != "unknown" {
				// "unknown/unknown" are attestations, not images.
				*others = append(*others, p.OS+"/"+p.Architecture)
			}
		}
	}
	return nil
}

// loadManifest reads an image manifest and its config.
func loadManifest(s fileStore, d descriptor) (*Image, error) {
	raw, err := readBlob(s, d, maxManifestSize, "image manifest")
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, model.Errorf(model.EINVALID, "image manifest: not JSON: %v", err)
	}
	img, err := imageFromManifest(m, d.Digest, func(cd descriptor) ([]byte, error) {
		return readBlob(s, cd, maxConfigSize, "image config")
	})
	if err != nil {
		return nil, err
	}
	for i := range img.Layers {
		digest := img.Layers[i].Digest
		img.Layers[i].open = func() (io.ReadCloser, error) {
			r, _, err := s.open(blobName(digest))
			if errors.Is(err, fs.ErrNotExist) {
				return nil, model.Errorf(model.EINVALID, "layer %s is missing from the image", digest)
			}
			return r, err
		}
	}
	return img, nil
}

// imageFromManifest checks a manifest, reads its config with readConfig
// and describes the layers (without a way to open them).
func imageFromManifest(m manifest, manifestDigest string, readConfig func(descriptor) ([]byte, error)) (*Image, error) {
	switch m.Config.MediaType {
	case mtOCIConfig, mtDockerConfig:
	default:
		return nil, model.Errorf(model.EINVALID, "not a container image: its config is %q (an artifact of another kind?)", m.Config.MediaType)
	}
	cfgRaw, err := readConfig(m.Config)
	if err != nil {
		return nil, err
	}
	cfg, err := parseConfig(cfgRaw, len(m.Layers))
	if err != nil {
		return nil, err
	}
	img := &Image{ManifestDigest: manifestDigest, ConfigDigest: m.Config.Digest, Config: cfg}
	for i, ld := range m.Layers {
		if err := layerMediaType(i, ld.MediaType); err != nil {
			return nil, err
		}
		if err := checkDigest(fmt.Sprintf("layer %d", i+1), ld.Digest); err != nil {
			return nil, err
		}
		img.Layers = append(img.Layers, Layer{Digest: ld.Digest, DiffID: cfg.RootFS.DiffIDs[i], MediaType: ld.MediaType, Size: ld.Size})
	}
	return img, nil
}

// dockerManifest is one image of a docker save archive's manifest.json.
type dockerManifest struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// openDocker reads the one image of a docker save archive.
func openDocker(s fileStore, raw []byte) (*Image, error) {
	var ms []dockerManifest
	if err := json.Unmarshal(raw, &ms); err != nil {
		return nil, model.Errorf(model.EINVALID, "manifest.json: not a docker save manifest: %v", err)
	}
	if len(ms) != 1 {
		var tags []string
		for _, m := range ms {
			tags = append(tags, strings.Join(m.RepoTags, "/"))
		}
		return nil, model.Errorf(model.EINVALID, "the archive holds %d images (%s); banger imports one: docker save only the one you want", len(ms), strings.Join(tags, ", "))
	}
	m := ms[0]
	cfgName, err := cleanName(m.Config)
	if err != nil || cfgName == "" {
		return nil, model.Errorf(model.EINVALID, "manifest.json: bad config name %q", m.Config)
	}
	cfgRaw, err := readFile(s, cfgName, maxConfigSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, model.Errorf(model.EINVALID, "image config %s is missing from the archive", m.Config)
	}
	if err != nil {
		return nil, err
	}
	cfg, err := parseConfig(cfgRaw, len(m.Layers))
	if err != nil {
		return nil, err
	}
	img := &Image{ConfigDigest: sha256Digest(cfgRaw), Config: cfg}
	if want, ok := strings.CutPrefix(cfgName, "blobs/sha256/"); ok && img.ConfigDigest != "sha256:"+want {
		return nil, model.Errorf(model.EINVALID, "image config is corrupt: its digest is %s, not sha256:%s", img.ConfigDigest, want)
	}
	for i, p := range m.Layers {
		name, err := cleanName(p)
		if err != nil || name == "" {
			return nil, model.Errorf(model.EINVALID, "manifest.json: bad layer name %q", p)
		}
		l := Layer{DiffID: cfg.RootFS.DiffIDs[i], MediaType: "application/vnd.docker.image.rootfs.diff.tar"}
		// Newer archives name layers by their blob's digest.
		if hex, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && digestRe.MatchString("sha256:"+hex) {
			l.Digest = "sha256:" + hex
		}
		l.open = func() (io.ReadCloser, error) {
			r, _, err := s.open(name)
			if errors.Is(err, fs.ErrNotExist) {
				return nil, model.Errorf(model.EINVALID, "layer %s is missing from the archive", path.Clean(p))
			}
			return r, err
		}
		img.Layers = append(img.Layers, l)
	}
	return img, nil
}
