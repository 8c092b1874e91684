package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/oci"
)

// importFlags are image build's flags for container images.
type importFlags struct {
	from       string
	dockerfile string
	context    string
	plainHTTP  bool
}

// Source prefixes --from takes, as skopeo and podman name transports.
const (
	prefixOCIArchive    = "oci-archive:"
	prefixDockerArchive = "docker-archive:"
	prefixOCILayout     = "oci:"
	prefixRegistry      = "docker://"
)

// importSource is what --from names.
type importSource struct {
	reference string
	archive   string
	layout    string
}

// classifySource tells what SOURCE names: an explicit transport prefix
// wins; else a path that exists is an archive (a file) or a layout (a
// directory), and anything else is a registry reference.
func classifySource(s string) (importSource, error) {
	switch {
	case strings.HasPrefix(s, prefixRegistry):
		return importSource{reference: strings.TrimPrefix(s, prefixRegistry)}, nil
	case strings.HasPrefix(s, prefixOCIArchive):
		return importSource{archive: strings.TrimPrefix(s, prefixOCIArchive)}, nil
	case strings.HasPrefix(s, prefixDockerArchive):
		return importSource{archive: strings.TrimPrefix(s, prefixDockerArchive)}, nil
	case strings.HasPrefix(s, prefixOCILayout):
		return importSource{layout: strings.TrimPrefix(s, prefixOCILayout)}, nil
	}
	fi, err := os.Lstat(s)
	switch {
	case err == nil && fi.IsDir():
		return importSource{layout: s}, nil
	case err == nil:
		return importSource{archive: s}, nil
	case errors.Is(err, os.ErrNotExist) && !strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "./"):
		return importSource{reference: s}, nil
	}
	return importSource{}, model.Errorf(model.EINVALID, "--from %s: %v", s, err)
}

// runImport builds an image from a container image: the CLI reads
// archives, layouts and registry credentials with the user's rights and
// sends them; a Dockerfile is built first with the user's builder.
func (a *App) runImport(ctx context.Context, f importFlags, req api.ImageImportRequest, kernelPath string, pp *progressPrinter) (model.Image, error) {
	var files []api.UploadFile
	defer func() {
		for _, uf := range files {
			uf.File.Close()
		}
	}()
	var src importSource
	if f.dockerfile != "" {
		archive, cleanup, err := a.buildDockerfile(ctx, f.dockerfile, f.context, pp)
		if err != nil {
			return model.Image{}, err
		}
		defer cleanup()
		abs, _ := filepath.Abs(f.dockerfile)
		req.Dockerfile = abs
		src.archive = archive
	} else {
		var err error
		if src, err = classifySource(f.from); err != nil {
			return model.Image{}, err
		}
	}
	switch {
	case src.reference != "":
		req.Reference = src.reference
		auth, err := registryAuth(src.reference, f.plainHTTP)
		if err != nil {
			return model.Image{}, err
		}
		if auth != nil {
			files = append(files, api.UploadFile{Role: api.RoleAuth, File: auth})
		}
	case src.archive != "":
		af, err := openUserFile("from", src.archive)
		if err != nil {
			return model.Image{}, err
		}
		files = append(files, api.UploadFile{Role: api.RoleArchive, File: af})
	default:
		lf, err := openLayout(src.layout)
		if err != nil {
			for _, uf := range lf {
				uf.File.Close()
			}
			return model.Image{}, err
		}
		files = append(files, lf...)
	}
	if kernelPath != "" {
		kf, err := openUserFile("kernel", kernelPath)
		if err != nil {
			return model.Image{}, err
		}
		files = append(files, api.UploadFile{Role: api.RoleKernel, File: kf})
	}
	return a.api().ImportImage(ctx, req, files, pp.event)
}

// registryAuth returns the user's credentials for the reference's
// registry as an in-memory file (nil when the user has none): read from
// their docker config (~/.docker/config.json, its credential helpers)
// with their rights, and sent only for that registry.
func registryAuth(ref string, plainHTTP bool) (*os.File, error) {
	registry, _, err := oci.ParseReference(ref, plainHTTP)
	if err != nil {
		return nil, err
	}
	reg, err := name.NewRegistry(registry)
	if err != nil {
		return nil, model.Errorf(model.EINVALID, "registry %q: %v", registry, err)
	}
	authr, err := authn.DefaultKeychain.Resolve(reg)
	if err != nil {
		return nil, fmt.Errorf("your registry credentials for %s: %w", registry, err)
	}
	if authr == authn.Anonymous {
		return nil, nil
	}
	cfg, err := authr.Authorization()
	if err != nil {
		return nil, fmt.Errorf("your registry credentials for %s: %w", registry, err)
	}
	b, _ := json.Marshal(oci.Auth{Username: cfg.Username, Password: cfg.Password, Auth: cfg.Auth, IdentityToken: cfg.IdentityToken, RegistryToken: cfg.RegistryToken})
	fd, err := unix.MemfdCreate("banger-auth", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	mf := os.NewFile(uintptr(fd), "auth")
	if _, err := mf.Write(b); err != nil {
		mf.Close()
		return nil, err
	}
	return mf, nil
}

// openLayout opens the files of an OCI layout directory with the user's
// rights: oci-layout, index.json and every blob, each a regular file
// named directly (no link is followed, the directory itself included).
func openLayout(dir string) ([]api.UploadFile, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	dfd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, model.Errorf(model.EINVALID, "--from %s: not a directory you can read (%v); pass an OCI layout directory", dir, err)
	}
	defer unix.Close(dfd)
	var files []api.UploadFile
	open := func(rel string) error {
		fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			if errors.Is(err, unix.ELOOP) {
				return model.Errorf(model.EINVALID, "--from %s: %s is a symbolic link; banger reads only the files themselves", dir, rel)
			}
			return model.Errorf(model.EINVALID, "--from %s: %s: %v", dir, rel, err)
		}
		f := os.NewFile(uintptr(fd), filepath.Join(abs, rel))
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			f.Close()
			return model.Errorf(model.EINVALID, "--from %s: %s is not a regular file", dir, rel)
		}
		if err := unix.SetNonblock(fd, false); err != nil {
			f.Close()
			return err
		}
		files = append(files, api.UploadFile{Role: api.RoleLayoutPrefix + rel, File: f})
		return nil
	}
	if err := open("index.json"); err != nil {
		return files, model.Errorf(model.EINVALID, "--from %s: no index.json: not an OCI layout directory", dir)
	}
	if _, err := os.Lstat(filepath.Join(abs, "oci-layout")); err == nil {
		if err := open("oci-layout"); err != nil {
			return files, err
		}
	}
	bfd, err := unix.Openat2(dfd, "blobs/sha256", &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS,
	})
	if err != nil {
		return files, model.Errorf(model.EINVALID, "--from %s: blobs/sha256: %v", dir, err)
	}
	bd := os.NewFile(uintptr(bfd), "blobs/sha256")
	names, err := bd.Readdirnames(-1)
	bd.Close()
	if err != nil {
		return files, err
	}
	for _, n := range names {
		rel := "blobs/sha256/" + n
		if !api.ValidLayoutPath(rel) {
			continue
		}
		if err := open(rel); err != nil {
			return files, err
		}
	}
	return files, nil
}

// printImported prints what an import made.
func (a *App) printImported(img model.Image) {
	fmt.Fprintf(a.Stdout, "image %s built: rootfs %s (%s), kernel %s\n", img.Name, img.RootfsPath, img.BuildSize, img.KernelPath)
	if s := img.Source; s != nil {
		what := s.Kind
		if s.Reference != "" {
			what += " " + s.Reference
		}
		fmt.Fprintf(a.Stdout, "from %s (%d layers), init %s", what, s.Layers, s.Init)
		if s.SSHInstalledWith != "" {
			fmt.Fprintf(a.Stdout, ", openssh-server installed with %s", s.SSHInstalledWith)
		}
		fmt.Fprintln(a.Stdout)
	}
}

// printImageSource prints an image's container source and session config
// in image inspect.
func printImageSource(w io.Writer, img model.Image) {
	s := img.Source
	if s == nil {
		return
	}
	what := s.Kind
	if s.Reference != "" {
		what += " " + s.Reference
	}
	fmt.Fprintf(w, "source:      %s\n", what)
	for _, d := range []struct{ label, v string }{
		{"manifest:    ", s.ManifestDigest}, {"config:      ", s.ConfigDigest},
		{"archive:     ", s.ArchiveDigest}, {"chain id:    ", s.ChainID},
	} {
		if d.v != "" {
			fmt.Fprintf(w, "%s%s\n", d.label, d.v)
		}
	}
	init := s.Init
	if s.SSHInstalledWith != "" {
		init += ", openssh-server installed with " + s.SSHInstalledWith
	}
	fmt.Fprintf(w, "layers:      %d (init %s)\n", s.Layers, init)
	if c := img.Config; c != nil {
		user := c.User
		if user == "" {
			user = "root"
		}
		fmt.Fprintf(w, "sessions:    user %s, in %s, %d environment variables\n", user, orDash(c.WorkingDir), len(c.Env))
	}
}
