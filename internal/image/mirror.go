package image

import (
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"banger/internal/model"
)

// maxMirrorLen bounds a mirror URL.
const maxMirrorLen = 256

// ValidateMirror checks a Debian mirror URL given to an image build. The
// URL reaches debootstrap's command line, wget and the image's apt
// sources, so only a plain http or https URL passes: a host name or
// address (and port), a path of safe characters, and nothing else: no
// credentials, query, fragment, escapes, "..", spaces or control
// characters, and nothing that could read as an option.
func ValidateMirror(raw string) error {
	bad := func(why string) error {
		return model.Errorf(model.EINVALID, "mirror %q: %s; give a URL such as http://deb.example.org/debian", raw, why)
	}
	if raw == "" {
		return bad("empty")
	}
	if len(raw) > maxMirrorLen {
		return bad("longer than " + strconv.Itoa(maxMirrorLen) + " characters")
	}
	for _, r := range raw {
		if r <= ' ' || r >= 0x7f {
			return bad("spaces, control and non-ASCII characters are not allowed")
		}
	}
	if strings.ContainsAny(raw, "?#%\\\"'`$;|&<>{}^*") {
		return bad("queries, fragments, escapes and shell characters are not allowed")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return bad("the scheme must be http or https")
	}
	if u.Opaque != "" || !strings.HasPrefix(raw, u.Scheme+"://") {
		return bad("not a URL with a host")
	}
	if u.User != nil || strings.Contains(u.Host, "@") {
		return bad("credentials are not allowed in a mirror URL")
	}
	host := u.Hostname()
	if host == "" {
		return bad("no host")
	}
	if port := u.Port(); port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return bad("bad port")
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return bad("bad port")
	}
	if _, err := netip.ParseAddr(host); err != nil && !validHostName(host) {
		return bad("bad host name")
	}
	for _, seg := range strings.Split(u.Path, "/") {
		if seg == ".." || seg == "." {
			return bad("\".\" and \"..\" are not allowed in the path")
		}
	}
	for _, r := range u.Path {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/-._~+", r)) {
			return bad("the path may hold letters, digits and / - . _ ~ + only")
		}
	}
	return nil
}

// validHostName checks a DNS host name: dot-separated labels of letters,
// digits and '-', not starting or ending with '-'.
func validHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// MirrorIsLocal reports whether a (valid) mirror URL names this host or
// a link-local address literally: builds for users who are not admins
// may not make the daemon fetch from its own services. A name that
// resolves to such an address is not caught here; build_netns confines
// what builds can reach.
func MirrorIsLocal(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsLinkLocalMulticast() || ip.IsMulticast())
}

// fetchLimits are wget's time limits for debootstrap's downloads (its
// WGETRC): a mirror that stops answering fails the build instead of
// holding it until build_timeout.
const fetchLimits = `# banger: time limits for image build downloads
timeout = 30
tries = 3
waitretry = 2
`

// aptLimitOpts are apt-get's time limits for the packages an image build
// installs.
const aptLimitOpts = "-o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 -o Acquire::Retries=2"
