package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// ImageUploadBackend is the part of the Backend that receives image files
// a user's CLI read with the user's rights: the daemon never opens a path
// a non-root caller names.
type ImageUploadBackend interface {
	// UploadImage checks req, then calls open to receive the image's
	// files (file parts) and registers its own copies of them: EINVALID
	// (bad name or stream, not a kernel), ECONFLICT (the caller already
	// has that name), ELIMIT (the disk limit).
	UploadImage(ctx context.Context, req ImageUploadRequest, open OpenFunc, progress ProgressFunc) (ImageRegisterResponse, error)
	// BuildImageUpload is BuildImage with the kernel sent in the stream
	// (one "kernel" part) instead of named by path; its error codes are
	// BuildImage's and UploadImage's.
	BuildImageUpload(ctx context.Context, req ImageBuildRequest, open OpenFunc, progress ProgressFunc) (model.Image, error)
}

// Roles of the files of an image upload.
const (
	RoleKernel   = "kernel"
	RoleRootfs   = "rootfs"
	RoleInitrd   = "initrd"
	RoleWorkSeed = "work_seed"
)

// ImageUploadRequest registers an image whose files follow in the stream.
type ImageUploadRequest struct {
	Name   string `json:"name"`
	Docker bool   `json:"docker,omitempty"`
}

// Query encodes r as URL parameters: an upload carries no body of its
// own.
func (r ImageUploadRequest) Query() url.Values {
	q := url.Values{"name": {r.Name}}
	if r.Docker {
		q.Set("docker", "1")
	}
	return q
}

// ParseImageUploadRequest decodes Query's output; unknown or repeated
// parameters are refused.
func ParseImageUploadRequest(q url.Values) (ImageUploadRequest, error) {
	var r ImageUploadRequest
	err := parseQuery(q, map[string]func(string) error{
		"name":   func(v string) error { r.Name = v; return nil },
		"docker": func(v string) error { r.Docker = v == "1"; return nil },
	})
	return r, err
}

// BuildQuery encodes an image build request (without KernelPath, which a
// streamed build replaces by its "kernel" part) as URL parameters.
func (r ImageBuildRequest) BuildQuery() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("name", r.Name)
	set("release", r.Release)
	set("mirror", r.Mirror)
	set("packages", strings.Join(r.Packages, ","))
	if r.Docker {
		q.Set("docker", "1")
	}
	if r.SizeBytes != 0 {
		q.Set("size_bytes", strconv.FormatInt(r.SizeBytes, 10))
	}
	return q
}

// ParseImageBuildQuery decodes BuildQuery's output.
func ParseImageBuildQuery(q url.Values) (ImageBuildRequest, error) {
	var r ImageBuildRequest
	err := parseQuery(q, map[string]func(string) error{
		"name":    func(v string) error { r.Name = v; return nil },
		"release": func(v string) error { r.Release = v; return nil },
		"mirror":  func(v string) error { r.Mirror = v; return nil },
		"packages": func(v string) error {
			for _, p := range strings.Split(v, ",") {
				if p != "" {
					r.Packages = append(r.Packages, p)
				}
			}
			return nil
		},
		"docker":     func(v string) error { r.Docker = v == "1"; return nil },
		"size_bytes": int64Param("size_bytes", &r.SizeBytes),
	})
	return r, err
}

func parseQuery(q url.Values, fields map[string]func(string) error) error {
	for k, vs := range q {
		set, ok := fields[k]
		if !ok {
			return model.Errorf(model.EINVALID, "unknown parameter %q", k)
		}
		if len(vs) != 1 {
			return model.Errorf(model.EINVALID, "parameter %q given %d times", k, len(vs))
		}
		if err := set(vs[0]); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) imageUploadRoutes(mux *http.ServeMux) {
	p := Prefix
	mux.HandleFunc("POST "+p+"/images/upload", s.handleUploadImage)
	mux.HandleFunc("POST "+p+"/images/build/upload", s.handleBuildImageUpload)
}

func (s *Server) handleUploadImage(w http.ResponseWriter, r *http.Request) {
	req, err := ParseImageUploadRequest(r.URL.Query())
	if err != nil {
		writeError(w, err)
		return
	}
	s.serveUpload(w, r, func(ctx context.Context, open OpenFunc, p ProgressFunc) (any, error) {
		return s.backend.UploadImage(ctx, req, open, p)
	})
}

func (s *Server) handleBuildImageUpload(w http.ResponseWriter, r *http.Request) {
	req, err := ParseImageBuildQuery(r.URL.Query())
	if err != nil {
		writeError(w, err)
		return
	}
	s.serveUpload(w, r, func(ctx context.Context, open OpenFunc, p ProgressFunc) (any, error) {
		return s.backend.BuildImageUpload(ctx, req, open, p)
	})
}

// UploadFile is one file of an image upload: its role and the file,
// opened by the caller with its own rights.
type UploadFile struct {
	Role string
	File *os.File
}

// UploadImage registers an image from files the caller opened.
func (c *Client) UploadImage(ctx context.Context, req ImageUploadRequest, files []UploadFile, progress func(Event)) (ImageRegisterResponse, error) {
	var v ImageRegisterResponse
	return v, c.upload(ctx, "/images/upload?"+req.Query().Encode(), func(w io.Writer) error {
		for _, f := range files {
			if err := WriteFilePart(ctx, w, f.Role, f.File); err != nil {
				return err
			}
		}
		return nil
	}, &v, progress)
}

// BuildImageUpload builds an image booting the kernel the caller opened.
func (c *Client) BuildImageUpload(ctx context.Context, req ImageBuildRequest, kernel *os.File, progress func(Event)) (model.Image, error) {
	var v model.Image
	return v, c.upload(ctx, "/images/build/upload?"+req.BuildQuery().Encode(), func(w io.Writer) error {
		return WriteFilePart(ctx, w, RoleKernel, kernel)
	}, &v, progress)
}

// A file part is a header line, {"role":"rootfs","size":N}, then extents:
// an 8-byte big-endian offset, an 8-byte length and that many bytes, in
// increasing order without overlap, inside the size. An extent of length
// zero ends the part; what no extent covers is a hole (zeros). So a
// sparse file costs only its data on the wire and on the daemon's disk.

// FileHeader starts a file part.
type FileHeader struct {
	Role string `json:"role"`
	Size int64  `json:"size"`
}

// maxHeaderLine bounds a part's header line.
const maxHeaderLine = 1024

// extentBlock is the unit WriteFilePart checks for zeros: a block of
// zeros in the file is not sent.
const extentBlock = 4096

// WriteFilePart writes f as one part with role. It sends only f's data
// (found with SEEK_DATA and SEEK_HOLE, then skipping blocks of zeros) up
// to the size f had when the part began.
func WriteFilePart(ctx context.Context, w io.Writer, role string, f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	hdr, _ := json.Marshal(FileHeader{Role: role, Size: size})
	if _, err := w.Write(append(hdr, '\n')); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, extentBlock)
	extent := func(off int64, data []byte) error {
		var h [16]byte
		binary.BigEndian.PutUint64(h[:8], uint64(off))
		binary.BigEndian.PutUint64(h[8:], uint64(len(data)))
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		end := size
		if err != nil {
			data = off // no hole reporting: read the rest
		} else if end, err = unix.Seek(fd, data, unix.SEEK_HOLE); err != nil {
			return fmt.Errorf("read %s: %w", f.Name(), err)
		}
		end = min(end, size)
		for pos := data; pos < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			if n == 0 {
				if err == nil || err == io.EOF {
					// The file shrank while it was read: the rest
					// goes as a hole.
					end = pos
					break
				}
				return fmt.Errorf("read %s: %w", f.Name(), err)
			}
			chunk := buf[:n]
			for start := 0; start < len(chunk); {
				stop := min(start+extentBlock, len(chunk))
				if bytes.Equal(chunk[start:stop], zero[:stop-start]) {
					start = stop
					continue
				}
				for stop < len(chunk) {
					next := min(stop+extentBlock, len(chunk))
					if bytes.Equal(chunk[stop:next], zero[:next-stop]) {
						break
					}
					stop = next
				}
				if err := extent(pos+int64(start), chunk[start:stop]); err != nil {
					return err
				}
				start = stop
			}
			pos += int64(n)
		}
		off = end
	}
	return extent(0, nil)
}

// PartReader reads the file parts of an upload.
type PartReader struct {
	r *bufio.Reader
}

// NewPartReader reads parts from r.
func NewPartReader(r io.Reader) *PartReader { return &PartReader{r: bufio.NewReaderSize(r, 64<<10)} }

// Next reads the next part's header; io.EOF means there are no more parts.
// The caller checks the header, then calls CopyTo before the next Next.
func (p *PartReader) Next() (FileHeader, error) {
	var h FileHeader
	line, err := p.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return h, io.EOF
		}
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxHeaderLine {
			return h, model.Errorf(model.EINVALID, "upload: a file header is longer than %d bytes", maxHeaderLine)
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return h, fmt.Errorf("upload: %w", err)
	}
	if len(line) > maxHeaderLine {
		return h, model.Errorf(model.EINVALID, "upload: a file header is longer than %d bytes", maxHeaderLine)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return h, model.Errorf(model.EINVALID, "upload: bad file header: %v", err)
	}
	if h.Size < 0 {
		return h, model.Errorf(model.EINVALID, "upload: %s: negative size", h.Role)
	}
	return h, nil
}

// CopyTo writes the current part's extents into dst (an empty file) at
// their offsets and gives dst the part's size. It refuses extents out of
// order, overlapping, or outside the size. It returns the data bytes
// received.
func (p *PartReader) CopyTo(ctx context.Context, dst *os.File, h FileHeader) (int64, error) {
	var (
		hdr  [16]byte
		next int64 // the first offset the next extent may use
		got  int64
		buf  = make([]byte, 1<<20)
	)
	for {
		if err := ctx.Err(); err != nil {
			return got, err
		}
		if _, err := io.ReadFull(p.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return got, fmt.Errorf("upload %s: %w", h.Role, err)
		}
		off := int64(binary.BigEndian.Uint64(hdr[:8]))
		n := int64(binary.BigEndian.Uint64(hdr[8:]))
		if n == 0 {
			break
		}
		if off < next || n < 0 || off > h.Size || n > h.Size-off {
			return got, model.Errorf(model.EINVALID, "upload %s: extent [%d, +%d) is out of order or outside the file's %d bytes", h.Role, off, n, h.Size)
		}
		for left := n; left > 0; {
			chunk := buf[:min(int64(len(buf)), left)]
			if _, err := io.ReadFull(p.r, chunk); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return got, fmt.Errorf("upload %s: %w", h.Role, err)
			}
			if _, err := dst.WriteAt(chunk, off+(n-left)); err != nil {
				return got, fmt.Errorf("upload %s: %w", h.Role, err)
			}
			left -= int64(len(chunk))
			got += int64(len(chunk))
		}
		next = off + n
	}
	if err := dst.Truncate(h.Size); err != nil {
		return got, fmt.Errorf("upload %s: %w", h.Role, err)
	}
	return got, nil
}

// int64Param is a parseQuery setter for an integer parameter named key.
func int64Param(key string, dst *int64) func(string) error {
	return func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return model.Errorf(model.EINVALID, "%s %q: not a number", key, v)
		}
		*dst = n
		return nil
	}
}
