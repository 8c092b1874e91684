package oci

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"regexp"
	"strings"

	"github.com/klauspost/compress/zstd"

	"banger/internal/model"
)

// Image is a container image ready to be applied: its verified config and
// its layers, lowest first.
type Image struct {
	// ManifestDigest is the digest of the image's manifest ("" for a
	// docker save archive, which has none).
	ManifestDigest string
	// ConfigDigest is the digest of the config JSON.
	ConfigDigest string
	Config       Config
	Layers       []Layer
}

// Config is the part of an image's config banger uses.
type Config struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Env        []string `json:"Env"`
		WorkingDir string   `json:"WorkingDir"`
		User       string   `json:"User"`
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// Layer is one layer of an image.
type Layer struct {
	// Digest is the digest of the blob as stored (compressed or not);
	// "" when the source names layers by path (docker save).
	Digest string
	// DiffID is the digest of the uncompressed tar, from the config.
	DiffID    string
	MediaType string
	Size      int64
	open      func() (io.ReadCloser, error)
}

// Limits on the JSON documents of an image: they are read into memory.
const (
	maxManifestSize = 4 << 20
	maxConfigSize   = 8 << 20
)

var digestRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// checkDigest refuses a digest banger cannot verify.
func checkDigest(what, d string) error {
	if !digestRe.MatchString(d) {
		return model.Errorf(model.EINVALID, "%s: digest %q is not sha256:<64 hex digits>", what, d)
	}
	return nil
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// parseConfig decodes and checks an image config: a Linux amd64 image
// whose rootfs lists one diff ID per layer.
func parseConfig(raw []byte, layers int) (Config, error) {
	var c Config
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, model.Errorf(model.EINVALID, "image config: not JSON: %v", err)
	}
	if c.OS != "" && c.OS != "linux" {
		return c, model.Errorf(model.EINVALID, "the image is for %s, not Linux", c.OS)
	}
	if c.Architecture != "" && c.Architecture != "amd64" {
		return c, model.Errorf(model.EINVALID, "the image is for %s; banger's guests are amd64: pick the linux/amd64 variant of the image", c.Architecture)
	}
	if c.RootFS.Type != "layers" {
		return c, model.Errorf(model.EINVALID, "image config: rootfs type %q, want \"layers\": not a container image", c.RootFS.Type)
	}
	if len(c.RootFS.DiffIDs) != layers {
		return c, model.Errorf(model.EINVALID, "image config lists %d layers, the manifest %d", len(c.RootFS.DiffIDs), layers)
	}
	for i, d := range c.RootFS.DiffIDs {
		if err := checkDigest(fmt.Sprintf("layer %d diff ID", i+1), d); err != nil {
			return c, err
		}
	}
	if len(c.RootFS.DiffIDs) == 0 {
		return c, model.Errorf(model.EINVALID, "the image has no layers")
	}
	return c, nil
}

// ChainID identifies the filesystem the layers make (image-spec config.md:
// ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " +
// DiffID(Ln))).
func (img *Image) ChainID() string {
	chain := ""
	for i, l := range img.Layers {
		if i == 0 {
			chain = l.DiffID
			continue
		}
		chain = sha256Digest([]byte(chain + " " + l.DiffID))
	}
	return chain
}

// Compressions of a layer blob.
const (
	compNone = "none"
	compGzip = "gzip"
	compZstd = "zstd"
)

// sniffCompression tells a layer's compression from its first bytes.
func sniffCompression(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		return compGzip
	case bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return compZstd
	}
	return compNone
}

// LayerReader is a layer's uncompressed tar. Finish reads what is left
// and checks the blob's digest and the diff ID; a layer is trusted only
// after Finish returned nil.
type LayerReader struct {
	layer   Layer
	index   int
	raw     io.ReadCloser
	rawHash hash.Hash
	rawN    int64
	tarHash hash.Hash
	r       io.Reader
	closers []func()
}

// Open opens layer i (from 0) of img.
func (img *Image) Open(i int) (*LayerReader, error) {
	l := img.Layers[i]
	raw, err := l.open()
	if err != nil {
		return nil, fmt.Errorf("layer %d: %w", i+1, err)
	}
	lr := &LayerReader{layer: l, index: i, raw: raw, rawHash: sha256.New(), tarHash: sha256.New()}
	br := bufio.NewReaderSize(io.TeeReader(countingReader{raw, &lr.rawN}, lr.rawHash), 64<<10)
	head, _ := br.Peek(4)
	var un io.Reader
	switch sniffCompression(head) {
	case compGzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			raw.Close()
			return nil, model.Errorf(model.EINVALID, "layer %d: broken gzip: %v", i+1, err)
		}
		lr.closers = append(lr.closers, func() { zr.Close() })
		un = zr
	case compZstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<27))
		if err != nil {
			raw.Close()
			return nil, model.Errorf(model.EINVALID, "layer %d: broken zstd: %v", i+1, err)
		}
		lr.closers = append(lr.closers, zr.Close)
		un = zr
	default:
		un = br
	}
	lr.r = io.TeeReader(un, lr.tarHash)
	return lr, nil
}

type countingReader struct {
	r io.Reader
	n *int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

func (lr *LayerReader) Read(p []byte) (int, error) {
	n, err := lr.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = model.Errorf(model.EINVALID, "layer %d is corrupt (%v): the image is damaged; make or download it again", lr.index+1, err)
	}
	return n, err
}

// Finish drains the layer and checks its digests.
func (lr *LayerReader) Finish() error {
	if _, err := io.Copy(io.Discard, lr); err != nil {
		return err
	}
	// Whatever follows the compressed stream is part of the blob.
	if _, err := io.Copy(io.Discard, io.TeeReader(countingReader{lr.raw, &lr.rawN}, lr.rawHash)); err != nil {
		return fmt.Errorf("layer %d: %w", lr.index+1, err)
	}
	if lr.layer.Digest != "" {
		if got := "sha256:" + hex.EncodeToString(lr.rawHash.Sum(nil)); got != lr.layer.Digest {
			return model.Errorf(model.EINVALID, "layer %d is corrupt: its digest is %s, the manifest says %s", lr.index+1, got, lr.layer.Digest)
		}
	}
	if lr.layer.Size > 0 && lr.rawN != lr.layer.Size {
		return model.Errorf(model.EINVALID, "layer %d is corrupt: %d bytes, the manifest says %d", lr.index+1, lr.rawN, lr.layer.Size)
	}
	if got := "sha256:" + hex.EncodeToString(lr.tarHash.Sum(nil)); got != lr.layer.DiffID {
		return model.Errorf(model.EINVALID, "layer %d is corrupt: its content's digest is %s, the image config says %s", lr.index+1, got, lr.layer.DiffID)
	}
	return nil
}

// Close releases the layer.
func (lr *LayerReader) Close() error {
	for _, c := range lr.closers {
		c()
	}
	return lr.raw.Close()
}

// Media types banger reads.
const (
	mtOCIIndex        = "application/vnd.oci.image.index.v1+json"
	mtOCIManifest     = "application/vnd.oci.image.manifest.v1+json"
	mtOCIConfig       = "application/vnd.oci.image.config.v1+json"
	mtDockerList      = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerManifest  = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerConfig    = "application/vnd.docker.container.image.v1+json"
	mtOCILayerPrefix  = "application/vnd.oci.image.layer."
	mtDockerLayerPfx  = "application/vnd.docker.image.rootfs."
	mtDockerForeignPf = "application/vnd.docker.image.rootfs.foreign."
)

// layerMediaType refuses a layer banger cannot apply.
func layerMediaType(i int, mt string) error {
	switch {
	case strings.HasPrefix(mt, mtDockerForeignPf):
		return model.Errorf(model.EINVALID, "layer %d is a foreign layer (%s), which is not in the image: banger cannot use Windows images", i+1, mt)
	case strings.HasPrefix(mt, mtOCILayerPrefix), strings.HasPrefix(mt, mtDockerLayerPfx):
		return nil
	}
	return model.Errorf(model.EINVALID, "layer %d has media type %q: not a container image layer", i+1, mt)
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

// manifest is an OCI image manifest or a Docker v2 schema 2 manifest.
type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

// index is an OCI image index or a Docker manifest list.
type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}
