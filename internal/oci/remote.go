package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// Auth is a user's credentials for one registry, as their docker config
// gives them.
type Auth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// PullOptions say how to reach a registry.
type PullOptions struct {
	// Auth is nil for anonymous pulls.
	Auth *Auth
	// PlainHTTP allows plain HTTP (only for a registry the user trusts
	// on its network path).
	PlainHTTP bool
	// NetNS, when set, is the network namespace file every connection is
	// made in (the daemon's build_netns).
	NetNS string
}

// ParseReference checks an image reference ("debian:bookworm",
// "registry.example/team/app@sha256:..."). It returns the registry's
// host and the reference in full.
func ParseReference(ref string, plainHTTP bool) (registry, full string, err error) {
	var opts []name.Option
	if plainHTTP {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return "", "", model.Errorf(model.EINVALID, "image reference %q: %v", ref, err)
	}
	return r.Context().RegistryStr(), r.Name(), nil
}

// Pull reads an image's manifest and config from a registry (the
// linux/amd64 variant of a multi-platform image); its layers are
// downloaded as they are opened. It returns the image and the reference
// in full.
func Pull(ctx context.Context, ref string, opts PullOptions) (*Image, string, error) {
	var nopts []name.Option
	if opts.PlainHTTP {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, "", model.Errorf(model.EINVALID, "image reference %q: %v", ref, err)
	}
	auth := authn.Anonymous
	if opts.Auth != nil {
		auth = authn.FromConfig(authn.AuthConfig{
			Username: opts.Auth.Username, Password: opts.Auth.Password, Auth: opts.Auth.Auth,
			IdentityToken: opts.Auth.IdentityToken, RegistryToken: opts.Auth.RegistryToken,
		})
	}
	rimg, err := remote.Image(r,
		remote.WithContext(ctx),
		remote.WithAuth(auth),
		remote.WithTransport(pullTransport(opts.NetNS)),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
		remote.WithUserAgent("banger"),
	)
	if err != nil {
		return nil, "", pullError(r.Name(), err)
	}
	rawManifest, err := rimg.RawManifest()
	if err != nil {
		return nil, "", pullError(r.Name(), err)
	}
	if len(rawManifest) > maxManifestSize {
		return nil, "", model.Errorf(model.EINVALID, "%s: manifest over %d bytes", r.Name(), maxManifestSize)
	}
	var m manifest
	if err := json.Unmarshal(rawManifest, &m); err != nil {
		return nil, "", model.Errorf(model.EINVALID, "%s: manifest: not JSON: %v", r.Name(), err)
	}
	img, err := imageFromManifest(m, sha256Digest(rawManifest), func(cd descriptor) ([]byte, error) {
		raw, err := rimg.RawConfigFile()
		if err != nil {
			return nil, pullError(r.Name(), err)
		}
		if len(raw) > maxConfigSize {
			return nil, model.Errorf(model.EINVALID, "%s: config over %d bytes", r.Name(), maxConfigSize)
		}
		if got := sha256Digest(raw); got != cd.Digest {
			return nil, model.Errorf(model.EINVALID, "%s: config is corrupt: its digest is %s, not %s", r.Name(), got, cd.Digest)
		}
		return raw, nil
	})
	if err != nil {
		return nil, "", err
	}
	for i := range img.Layers {
		digest := img.Layers[i].Digest
		img.Layers[i].open = func() (io.ReadCloser, error) {
			h, err := v1.NewHash(digest)
			if err != nil {
				return nil, err
			}
			l, err := rimg.LayerByDigest(h)
			if err != nil {
				return nil, pullError(r.Name(), err)
			}
			rc, err := l.Compressed()
			if err != nil {
				return nil, pullError(r.Name(), err)
			}
			return rc, nil
		}
	}
	return img, r.Name(), nil
}

// pullError turns a registry's refusal into a domain error.
func pullError(ref string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return model.Errorf(model.EFORBIDDEN, "%s: the registry refused access (%d): log in with `docker login` (banger reads ~/.docker/config.json as you) or check the name", ref, te.StatusCode)
		case http.StatusNotFound:
			return model.Errorf(model.ENOTFOUND, "%s: no such image in the registry", ref)
		}
	}
	return model.Errorf(model.EUNAVAILABLE, "%s: %v", ref, err)
}

// pullTransport is the HTTP transport of pulls, dialling in netns when
// set.
func pullTransport(netns string) http.RoundTripper {
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}
	if netns != "" {
		t.DialContext = DialInNetNS(netns)
	}
	return t
}

// DialInNetNS returns a dial function whose sockets are made in the
// network namespace the file nsPath names (such as /run/netns/NAME):
// each socket is created on a thread of its own that entered the
// namespace and is never given back to the runtime. Names are resolved
// with Go's resolver, whose DNS sockets are made the same way, and
// dialling is serial (no Happy Eyeballs goroutines on other threads).
func DialInNetNS(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	plain := &net.Dialer{Timeout: 30 * time.Second, FallbackDelay: -1}
	inNS := func(ctx context.Context, network, addr string, d *net.Dialer) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			// Never unlocked: the thread ends with this goroutine, so
			// no other goroutine ever runs in the namespace.
			runtime.LockOSThread()
			fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{err: fmt.Errorf("network namespace %s: %w", nsPath, err)}
				return
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err != nil {
				ch <- result{err: fmt.Errorf("enter network namespace %s: %w", nsPath, err)}
				return
			}
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return inNS(ctx, network, addr, plain)
	}}
	d := &net.Dialer{Timeout: 30 * time.Second, FallbackDelay: -1, Resolver: resolver}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return inNS(ctx, network, addr, d)
	}
}
