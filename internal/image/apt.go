package image

import (
	"bufio"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"banger/internal/model"
)

// Host files read for the defaults of an image build. Tests use the parsing
// functions on file contents instead.
const (
	osReleasePath   = "/etc/os-release"
	aptSourcesList  = "/etc/apt/sources.list"
	aptSourcesListD = "/etc/apt/sources.list.d"
)

// HostRelease returns the Debian release the host runs (VERSION_CODENAME in
// /etc/os-release, e.g. "bookworm"), the default release of an image.
func HostRelease() (string, error) {
	b, err := os.ReadFile(osReleasePath)
	if err != nil {
		return "", model.Errorf(model.EUNAVAILABLE, "host release: %w; pass a Debian release", err)
	}
	return parseOSRelease(string(b))
}

// parseOSRelease returns VERSION_CODENAME from os-release content. Only a
// Debian host has a release debootstrap can build from the host's mirror.
func parseOSRelease(content string) (string, error) {
	vars := map[string]string{}
	for _, line := range strings.Split(content, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		vars[k] = strings.Trim(v, `"'`)
	}
	if vars["ID"] != "debian" {
		return "", model.Errorf(model.EUNAVAILABLE, "host release: host is %q, not Debian; pass a Debian release and mirror", vars["ID"])
	}
	if vars["VERSION_CODENAME"] == "" {
		return "", model.Errorf(model.EUNAVAILABLE, "host release: no VERSION_CODENAME in os-release; pass a Debian release")
	}
	return vars["VERSION_CODENAME"], nil
}

// aptSource is one repository entry of the apt configuration, in either
// the one-line or the deb822 format.
type aptSource struct {
	Type       string // "deb" or "deb-src"
	URI        string
	Suite      string
	Components []string
	SignedBy   string
	Enabled    bool
}

// HostMirror returns the Debian archive the host's apt uses for release's
// main suite, read from /etc/apt/sources.list and /etc/apt/sources.list.d
// (one-line *.list and deb822 *.sources files).
func HostMirror(release string) (string, error) {
	var sources []aptSource
	if b, err := os.ReadFile(aptSourcesList); err == nil {
		sources = append(sources, parseSourcesList(string(b))...)
	}
	entries, _ := os.ReadDir(aptSourcesListD)
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, name := range names {
		p := filepath.Join(aptSourcesListD, name)
		switch {
		case strings.HasSuffix(name, ".list"):
			if b, err := os.ReadFile(p); err == nil {
				sources = append(sources, parseSourcesList(string(b))...)
			}
		case strings.HasSuffix(name, ".sources"):
			if b, err := os.ReadFile(p); err == nil {
				sources = append(sources, parseDeb822Sources(string(b))...)
			}
		}
	}
	return pickMirror(sources, release)
}

// parseSourcesList parses the one-line format:
// "deb [opt=val ...] URI SUITE [COMPONENT...]".
func parseSourcesList(content string) []aptSource {
	var out []aptSource
	sc := bufio.NewScanner(strings.NewReader(content))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) < 3 || (fields[0] != "deb" && fields[0] != "deb-src") {
			continue
		}
		s := aptSource{Type: fields[0], Enabled: true}
		rest := fields[1:]
		if strings.HasPrefix(rest[0], "[") {
			// Options run up to the field that ends with "]".
			var opts []string
			for len(rest) > 0 {
				f := rest[0]
				rest = rest[1:]
				opts = append(opts, strings.Trim(f, "[]"))
				if strings.HasSuffix(f, "]") {
					break
				}
			}
			for _, o := range opts {
				if k, v, ok := strings.Cut(o, "="); ok && strings.EqualFold(k, "signed-by") {
					s.SignedBy = v
				}
			}
		}
		if len(rest) < 2 {
			continue
		}
		s.URI, s.Suite, s.Components = rest[0], rest[1], rest[2:]
		out = append(out, s)
	}
	return out
}

// parseDeb822Sources parses the deb822 format of *.sources files: stanzas
// of "Field: value" lines separated by blank lines, where one stanza may
// name several types, URIs and suites.
func parseDeb822Sources(content string) []aptSource {
	var out []aptSource
	flush := func(f map[string]string) {
		if len(f) == 0 {
			return
		}
		enabled := !strings.EqualFold(strings.TrimSpace(f["enabled"]), "no")
		comps := strings.Fields(f["components"])
		for _, typ := range strings.Fields(f["types"]) {
			for _, uri := range strings.Fields(f["uris"]) {
				for _, suite := range strings.Fields(f["suites"]) {
					out = append(out, aptSource{
						Type: typ, URI: uri, Suite: suite, Components: comps,
						SignedBy: strings.TrimSpace(f["signed-by"]), Enabled: enabled,
					})
				}
			}
		}
	}
	fields := map[string]string{}
	last := ""
	for _, line := range strings.Split(content, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			flush(fields)
			fields, last = map[string]string{}, ""
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			// A continuation line (e.g. an inline Signed-By key).
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = strings.ToLower(strings.TrimSpace(k))
		fields[last] = strings.TrimSpace(v)
	}
	flush(fields)
	return out
}

// pickMirror returns the URI of the Debian archive serving release's main
// suite. Security, updates and backports suites differ in name and so never
// match; a third-party repository that reuses the release's name is told
// apart by the Debian archive's conventions: its path ends in "/debian" or
// it is signed by the Debian archive keyring.
func pickMirror(sources []aptSource, release string) (string, error) {
	for _, s := range sources {
		if !s.Enabled || s.Type != "deb" || s.Suite != release || !contains(s.Components, "main") {
			continue
		}
		u, err := url.Parse(s.URI)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") {
			continue
		}
		if strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/debian") || strings.Contains(s.SignedBy, "debian-archive-keyring") {
			return strings.TrimRight(s.URI, "/"), nil
		}
	}
	return "", model.Errorf(model.EUNAVAILABLE, "host mirror: no Debian archive for %q (main) in the host's apt sources; pass a mirror", release)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
