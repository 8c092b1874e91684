package api

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"

	"banger/internal/model"
)

// ImageImportBackend builds images from container images.
type ImageImportBackend interface {
	// ImportImage checks req, then calls open to receive what the CLI
	// read with the caller's rights (an archive, a layout's files, the
	// caller's registry credentials, a kernel) and builds an image from
	// the container image: EINVALID (bad name, reference or stream; not
	// a container image; a corrupt or hostile layer; an image banger
	// cannot boot), ECONFLICT (the caller has that name), EFORBIDDEN (a
	// registry on the daemon's own host, or refused credentials),
	// ENOTFOUND (no such image in the registry), EUNAVAILABLE (the
	// registry or a tool), ELIMIT (the disk limit, build_timeout).
	ImportImage(ctx context.Context, req ImageImportRequest, open OpenFunc, progress ProgressFunc) (model.Image, error)
}

// Roles of an import's parts: the registry credentials (JSON), an
// archive, and the files of an OCI layout (RoleLayoutPrefix + the path
// inside the layout). RoleKernel may come too.
const (
	RoleAuth         = "auth"
	RoleArchive      = "archive"
	RoleLayoutPrefix = "layout/"
)

// layoutPath is a file of an OCI layout the daemon accepts.
var layoutPath = regexp.MustCompile(`^(oci-layout|index\.json|blobs/sha256/[0-9a-f]{64})$`)

// ValidLayoutPath reports whether p is a file of an OCI layout banger
// reads.
func ValidLayoutPath(p string) bool { return layoutPath.MatchString(p) }

// ImageImportRequest builds an image from a container image: one in a
// registry (Reference), or one whose archive or layout follows in the
// stream.
type ImageImportRequest struct {
	Name string `json:"name"`
	// Reference names an image in a registry; empty when it is sent.
	Reference string `json:"reference,omitempty"`
	// PlainHTTP lets the registry be reached without TLS.
	PlainHTTP bool `json:"plain_http,omitempty"`
	// Dockerfile is the path of the Dockerfile the CLI built the sent
	// image from, recorded as the image's source.
	Dockerfile string `json:"dockerfile,omitempty"`
	// SizeBytes is the root filesystem's size; 0 fits the contents.
	SizeBytes int64 `json:"size_bytes,omitempty"`
}

// Query encodes r as URL parameters.
func (r ImageImportRequest) Query() url.Values {
	q := url.Values{"name": {r.Name}}
	if r.Reference != "" {
		q.Set("reference", r.Reference)
	}
	if r.PlainHTTP {
		q.Set("plain_http", "1")
	}
	if r.Dockerfile != "" {
		q.Set("dockerfile", r.Dockerfile)
	}
	if r.SizeBytes != 0 {
		q.Set("size_bytes", strconv.FormatInt(r.SizeBytes, 10))
	}
	return q
}

// ParseImageImportRequest decodes Query's output.
func ParseImageImportRequest(q url.Values) (ImageImportRequest, error) {
	var r ImageImportRequest
	err := parseQuery(q, map[string]func(string) error{
		"name":       func(v string) error { r.Name = v; return nil },
		"reference":  func(v string) error { r.Reference = v; return nil },
		"plain_http": func(v string) error { r.PlainHTTP = v == "1"; return nil },
		"dockerfile": func(v string) error { r.Dockerfile = v; return nil },
		"size_bytes": int64Param("size_bytes", &r.SizeBytes),
	})
	return r, err
}

func (s *Server) imageImportRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+Prefix+"/images/import", s.handleImportImage)
}

func (s *Server) handleImportImage(w http.ResponseWriter, r *http.Request) {
	req, err := ParseImageImportRequest(r.URL.Query())
	if err != nil {
		writeError(w, err)
		return
	}
	s.serveUpload(w, r, func(ctx context.Context, open OpenFunc, p ProgressFunc) (any, error) {
		return s.backend.ImportImage(ctx, req, open, p)
	})
}

// ImportImage builds an image from a container image; files are the
// parts the caller opened with its own rights (RoleArchive, or
// RoleLayoutPrefix+path for each file of a layout, RoleAuth, RoleKernel).
func (c *Client) ImportImage(ctx context.Context, req ImageImportRequest, files []UploadFile, progress func(Event)) (model.Image, error) {
	var v model.Image
	return v, c.upload(ctx, "/images/import?"+req.Query().Encode(), func(w io.Writer) error {
		for _, f := range files {
			if err := WriteFilePart(ctx, w, f.Role, f.File); err != nil {
				return err
			}
		}
		return nil
	}, &v, progress)
}
