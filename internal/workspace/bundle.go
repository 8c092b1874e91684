package workspace

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// A git bundle is written by the guest, which is not trusted: its header
// names the refs it carries, and nothing in it may become an option, a
// refspec or a ref of the host repository. ImportBundle reads the header
// itself, accepts only the refs fetch asked for at the commits the
// capture reported, and fetches them with explicit refspecs.

// Limits on a bundle header: a real one from the guest names two refs
// and a few prerequisites.
const (
	maxBundleHeader = 256 << 10
	maxBundleLines  = 1024
)

// BundleHeader is what a git bundle says about itself before its pack.
type BundleHeader struct {
	// Version is 2 or 3.
	Version int
	// ObjectFormat is "sha1" or "sha256".
	ObjectFormat string
	// Prerequisites are the commits the bundle's pack needs the
	// receiving repository to have.
	Prerequisites []string
	// Refs are the refs the bundle carries, in header order.
	Refs []BundleRef
}

// BundleRef is one ref line of a bundle header.
type BundleRef struct {
	Object string
	Name   string
}

// hexLen returns the length of an object name in format, or 0.
func hexLen(format string) int {
	switch format {
	case "sha1":
		return 40
	case "sha256":
		return 64
	}
	return 0
}

// isHex reports whether s is n lowercase hex digits.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ReadBundleHeader parses a git bundle's header (gitformat-bundle(5))
// strictly: the v2 or v3 signature, v3 capabilities (only object-format
// is accepted: a filtered bundle is refused), prerequisite lines, ref
// lines whose object names have the length of the object format, and
// the empty line that ends the header. A header longer than 256 KiB or
// 1024 lines, a line without its newline, or a carriage return is
// refused.
func ReadBundleHeader(r io.Reader) (BundleHeader, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, maxBundleHeader+1), 64<<10)
	var h BundleHeader
	read := 0
	for n := 0; ; n++ {
		if n >= maxBundleLines {
			return h, fmt.Errorf("bundle header: more than %d lines", maxBundleLines)
		}
		line, err := br.ReadString('\n')
		read += len(line)
		if read > maxBundleHeader {
			return h, fmt.Errorf("bundle header: longer than %d bytes", maxBundleHeader)
		}
		if err != nil {
			if errors.Is(err, io.EOF) && n == 0 {
				return h, fmt.Errorf("not a git bundle (it starts with %q)", clip(line))
			}
			if errors.Is(err, io.EOF) {
				return h, errors.New("bundle header: ends before the empty line that closes it")
			}
			return h, fmt.Errorf("bundle header: %w", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if strings.ContainsAny(line, "\r\x00") {
			return h, fmt.Errorf("bundle header: line %d holds a carriage return or NUL", n+1)
		}
		if n == 0 {
			switch line {
			case "# v2 git bundle":
				h.Version, h.ObjectFormat = 2, "sha1"
			case "# v3 git bundle":
				h.Version, h.ObjectFormat = 3, "sha1"
			default:
				return h, fmt.Errorf("not a git bundle (first line %q)", clip(line))
			}
			continue
		}
		if line == "" {
			return h, nil
		}
		hl := hexLen(h.ObjectFormat)
		switch {
		case line[0] == '@':
			if h.Version != 3 || len(h.Prerequisites) > 0 || len(h.Refs) > 0 {
				return h, fmt.Errorf("bundle header: capability %q out of place", clip(line))
			}
			switch line {
			case "@object-format=sha1":
				h.ObjectFormat = "sha1"
			case "@object-format=sha256":
				h.ObjectFormat = "sha256"
			default:
				return h, fmt.Errorf("bundle header: capability %q is not supported", clip(line))
			}
		case line[0] == '-':
			if len(h.Refs) > 0 {
				return h, fmt.Errorf("bundle header: prerequisite %q after the refs", clip(line))
			}
			// What follows the object name is the commit's subject:
			// the guest's text, never used.
			oid, _, _ := strings.Cut(line[1:], " ")
			if !isHex(oid, hl) {
				return h, fmt.Errorf("bundle header: prerequisite %q is not a %s object name", clip(line), h.ObjectFormat)
			}
			h.Prerequisites = append(h.Prerequisites, oid)
		default:
			oid, name, ok := strings.Cut(line, " ")
			if !ok || !isHex(oid, hl) || name == "" {
				return h, fmt.Errorf("bundle header: line %q is not \"<%s object name> <ref>\"", clip(line), h.ObjectFormat)
			}
			h.Refs = append(h.Refs, BundleRef{Object: oid, Name: name})
		}
	}
}

// ReadBundleFile reads the header of the bundle file at path.
func ReadBundleFile(path string) (BundleHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return BundleHeader{}, err
	}
	defer f.Close()
	return ReadBundleHeader(f)
}

// clip shortens s for an error message; %q then quotes what is left.
func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// CheckBundle compares a bundle's header with what fetch asked for: the
// object format of the host repository, and for each ref the bundle may
// carry (by its name in the guest) the commit the capture reported. A
// ref fetch did not ask for, a name given twice, or a ref at another
// commit is refused; a ref fetch asked for may be missing (a work branch
// still at the base is not in the bundle).
func CheckBundle(h BundleHeader, format string, want map[string]string) error {
	if h.ObjectFormat != format {
		return fmt.Errorf("the bundle's objects are %s, the repository's %s", h.ObjectFormat, format)
	}
	seen := map[string]bool{}
	var problems []string
	for _, ref := range h.Refs {
		commit, ok := want[ref.Name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("ref %q, which fetch did not ask for", clip(ref.Name)))
		case seen[ref.Name]:
			problems = append(problems, fmt.Sprintf("ref %q twice", clip(ref.Name)))
		case ref.Object != commit:
			problems = append(problems, fmt.Sprintf("ref %q at %s where the capture saw %s", ref.Name, short(ref.Object), short(commit)))
		}
		seen[ref.Name] = true
	}
	if len(problems) > 0 {
		return errors.New("it names " + strings.Join(problems, ", "))
	}
	return nil
}

// objectFormat returns the object format of the repository at root.
func objectFormat(ctx context.Context, r hostexec.Runner, root string) (string, error) {
	out, err := git(ctx, r, root, "rev-parse", "--show-object-format")
	if err != nil {
		return "", fmt.Errorf("object format of %s: %w", root, err)
	}
	f := strings.TrimSpace(out)
	if hexLen(f) == 0 {
		return "", fmt.Errorf("object format of %s: unknown %q", root, f)
	}
	return f, nil
}

// checkRefName asks git whether name is a valid full ref name. A name
// starting with '-' never reaches git.
func checkRefName(ctx context.Context, r hostexec.Runner, name string) error {
	if name == "" || strings.HasPrefix(name, "-") || !strings.HasPrefix(name, "refs/") {
		return fmt.Errorf("ref name %q: not a full ref name", clip(name))
	}
	if _, err := r.Run(ctx, "git", "check-ref-format", name); err != nil {
		return fmt.Errorf("ref name %q: git refuses it", clip(name))
	}
	return nil
}

// FetchRefs returns the ref updates of a fetch of vm's workspace on
// branch whose capture saw the work branch at head and the uncommitted
// work at wip: the guest's refs/heads/<branch> into RemoteRef, its wip
// ref into WIPRef, which is deleted when wip is empty.
func FetchRefs(vm, branch, head, wip string) []RefUpdate {
	return []RefUpdate{
		{Ref: RemoteRef(vm, branch), Commit: head, Source: "refs/heads/" + branch},
		{Ref: WIPRef(vm, branch), Commit: wip, Source: WIPRefInGuest},
	}
}

// bundleRefused is the error of a bundle that is not what fetch asked
// for.
func bundleRefused(root, why string) error {
	return model.Errorf(model.ECONFLICT, "refusing the guest's bundle: %s; nothing was written to %s. A guest whose git adds refs to its bundles has been tampered with: look at the guest before you trust its work", why, root)
}
