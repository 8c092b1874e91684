package workspace

import (
	"fmt"
	"path"
	"strings"

	"banger/internal/model"
)

// GuestHome is where a workspace's relative guest path is rooted: banger
// guests are single-user root.
const GuestHome = "/root"

// WIPRefInGuest is the ref the guest keeps its uncommitted work in, as a
// commit on top of HEAD made with a temporary index.
const WIPRefInGuest = "refs/banger/wip"

// DefaultBranch is the work branch of a VM when the user names none.
func DefaultBranch(vm string) string { return "banger/" + vm }

// RemoteRef is where `banger workspace fetch` puts a VM's work branch in
// the host repository: a remote-tracking ref, so the user's own branches,
// index and working tree are never touched.
func RemoteRef(vm, branch string) string { return "refs/remotes/banger-" + vm + "/" + branch }

// WIPRef is where fetch puts the guest's uncommitted work: a commit whose
// parent is the guest's HEAD.
func WIPRef(vm, branch string) string { return RemoteRef(vm, branch) + "-wip" }

// ValidateBranch checks a work branch name against git's rules for branch
// names (git check-ref-format --branch), so the daemon refuses what git
// would, before touching the guest.
func ValidateBranch(name string) error {
	bad := func(why string) error {
		return model.Errorf(model.EINVALID, "branch name %q: %s", name, why)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > 200:
		return bad("longer than 200 characters")
	case strings.HasPrefix(name, "-"):
		return bad("starts with '-'")
	case name == "HEAD" || name == "@":
		return bad("reserved by git")
	case strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/"):
		return bad("starts or ends with '/'")
	case strings.HasSuffix(name, "."):
		return bad("ends with '.'")
	case strings.Contains(name, ".."):
		return bad("contains \"..\"")
	case strings.Contains(name, "//"):
		return bad("contains \"//\"")
	case strings.Contains(name, "@{"):
		return bad("contains \"@{\"")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\", r) {
			return bad(fmt.Sprintf("contains %q", r))
		}
	}
	for _, part := range strings.Split(name, "/") {
		if strings.HasPrefix(part, ".") {
			return bad("a component starts with '.'")
		}
		if strings.HasSuffix(part, ".lock") {
			return bad("a component ends with \".lock\"")
		}
	}
	return nil
}

// GuestPath resolves a workspace's guest path: empty means
// /root/<repoName>; a relative path (or "~/...") is relative to /root. It
// must not contain "..", must stay under /root, and must not be /root
// itself.
func GuestPath(p, repoName string) (string, error) {
	if p == "" {
		if repoName == "" || strings.ContainsAny(repoName, "/\x00") || repoName == "." || repoName == ".." {
			return "", model.Errorf(model.EINVALID, "no guest path given and repository name %q cannot be one; pass --guest-path", repoName)
		}
		p = repoName
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return "", model.Errorf(model.EINVALID, "guest path %q: control characters are not allowed", p)
		}
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", model.Errorf(model.EINVALID, "guest path %q: \"..\" is not allowed; give an absolute path or one relative to /root", p)
		}
	}
	switch {
	case p == "~":
		p = GuestHome
	case strings.HasPrefix(p, "~/"):
		p = GuestHome + "/" + p[2:]
	case !strings.HasPrefix(p, "/"):
		p = GuestHome + "/" + p
	}
	p = path.Clean(p)
	if p == "/" || p == GuestHome {
		return "", model.Errorf(model.EINVALID, "guest path %q: name a directory for the repository, such as /root/project", p)
	}
	// Workspaces live on the work disk, which is /root: the system disk
	// is the image's, reset by reset-system.
	if !strings.HasPrefix(p, GuestHome+"/") {
		return "", model.Errorf(model.EINVALID, "guest path %q: workspaces go under %s (the VM's work disk); give a path such as %s/project or a relative one", p, GuestHome, GuestHome)
	}
	return p, nil
}

// shq quotes s for a POSIX shell.
func shq(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// staging is where a prepare extracts before replacing the guest path, so
// a failed prepare leaves the previous workspace whole.
func staging(gp string) string { return gp + ".banger-new" }

// refIdentity names banger as the committer of the ref updates its
// scripts make. Without an identity, git derives one from the hostname
// and waits on a DNS lookup a guest without a network cannot answer
// (10 seconds per ref update).
const refIdentity = "export GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost\n"

// PrecheckScript prints whether the guest has git ("git=1" or "git=0")
// and what is at the guest path ("path=absent", "path=empty", "path=repo"
// for a directory with a .git, "path=other").
func PrecheckScript(gp string) string {
	return fmt.Sprintf(`gp=%s
if command -v git >/dev/null 2>&1; then echo git=1; else echo git=0; fi
if [ ! -e "$gp" ] && [ ! -L "$gp" ]; then echo path=absent
elif [ -d "$gp" ] && [ ! -L "$gp" ] && [ -z "$(ls -A -- "$gp")" ]; then echo path=empty
elif [ -d "$gp/.git" ]; then echo path=repo
else echo path=other
fi
`, shq(gp))
}

// Precheck is what PrecheckScript found.
type Precheck struct {
	Git  bool
	Path string
}

// ParsePrecheck reads PrecheckScript's output strictly: exactly the
// two lines it prints, in order, with the values it prints. The guest is
// not trusted to print what it was asked to.
func ParsePrecheck(out string) (Precheck, error) {
	bad := func() (Precheck, error) {
		return Precheck{}, fmt.Errorf("unexpected precheck output %q", clip(out))
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 3 || lines[2] != "" {
		return bad()
	}
	var p Precheck
	switch lines[0] {
	case "git=1":
		p.Git = true
	case "git=0":
	default:
		return bad()
	}
	switch v, ok := strings.CutPrefix(lines[1], "path="); {
	case ok && (v == "absent" || v == "empty" || v == "repo" || v == "other"):
		p.Path = v
	default:
		return bad()
	}
	return p, nil
}

// ExtractScript unpacks the tar stream on its standard input into the
// guest path's staging directory, files owned by root.
func ExtractScript(gp string) string {
	return fmt.Sprintf(`set -eu
new=%s
rm -rf -- "$new"
mkdir -p -- "$new"
tar -x --no-same-owner -f - -C "$new"
# Take whatever follows the end of the archive, so the sender never
# writes into a closed channel.
cat >/dev/null
`, shq(staging(gp)))
}

// AbortScript removes a failed prepare's staging directory.
func AbortScript(gp string) string {
	return "rm -rf -- " + shq(staging(gp))
}

// SetupParams describe the guest side of a prepared repository.
type SetupParams struct {
	GuestPath string
	Mode      model.WorkspacePrepareMode
	Branch    string
	Base      string
	UserName  string
	UserEmail string
}

// SetupScript turns the staging directory into the workspace: the work
// branch is created at the base commit and checked out without touching
// the working tree (a full copy keeps the user's index, so staged changes
// stay staged; a shallow overlay gets an index of HEAD, so every change
// shows as unstaged), the base and branch are recorded in the repository's
// config (banger.base, banger.branch), the user's identity is set, and the
// staging directory replaces the guest path.
func SetupScript(p SetupParams) string {
	var b strings.Builder
	b.WriteString("set -eu\n" + refIdentity)
	fmt.Fprintf(&b, `gp=%s
new=%s
base=%s
branch=%s
cd -- "$new"
if ! git rev-parse --verify -q "$base^{commit}" >/dev/null; then
	echo "banger: commit $base is not in the repository that was sent" >&2
	exit 1
fi
git update-ref -m "banger: work branch at the prepared HEAD" "refs/heads/$branch" "$base"
git symbolic-ref HEAD "refs/heads/$branch"
`, shq(p.GuestPath), shq(staging(p.GuestPath)), shq(p.Base), shq(p.Branch))
	if p.Mode == model.WorkspacePrepareModeShallowOverlay {
		b.WriteString("git read-tree HEAD\n")
	}
	b.WriteString(`git config banger.base "$base"
git config banger.branch "$branch"
`)
	if p.UserName != "" {
		fmt.Fprintf(&b, "git config user.name %s\n", shq(p.UserName))
	}
	if p.UserEmail != "" {
		fmt.Fprintf(&b, "git config user.email %s\n", shq(p.UserEmail))
	}
	b.WriteString(`cd /
rm -rf -- "$gp"
mv -- "$new" "$gp"
git -C "$gp" update-index -q --refresh >/dev/null 2>&1 || true
`)
	return b.String()
}

// SetupAndCaptureScript is SetupScript followed, in the same session,
// by CaptureScript of the new workspace (so the tree as prepared is
// snapshotted without another round trip): a failed setup fails the
// script, a failed capture only prints nothing.
func SetupAndCaptureScript(p SetupParams) string {
	return SetupScript(p) + "sh -c " + shq(CaptureScript(p.GuestPath, p.Branch, p.Base)) + " || true\n"
}

// tempIndex is shell that snapshots the working tree into a temporary
// index $idx (removed on exit), leaving the repository's own index alone.
const tempIndex = `idx=$(mktemp)
trap 'rm -f "$idx"' EXIT
gitdir=$(git rev-parse --git-dir)
if [ -f "$gitdir/index" ]; then cp "$gitdir/index" "$idx"; else rm -f "$idx"; fi
GIT_INDEX_FILE=$idx git add -A
`

// CaptureScript records the guest's work: the work branch's head, and
// uncommitted work (tracked and untracked, not ignored) as a commit on
// top of HEAD in refs/banger/wip, made with a temporary index so the
// guest's index and working tree are untouched. The wip commit has a
// fixed author and date, so unchanged work gives the same commit each
// time. It prints "<head> <wip or -> <1 if there are commits the base
// does not have, else 0>".
func CaptureScript(gp, branch, base string) string {
	return fmt.Sprintf(`set -eu
`+refIdentity+`gp=%[1]s
branch=%[2]s
base=%[3]s
cd -- "$gp"
if ! head=$(git rev-parse --verify -q "refs/heads/$branch^{commit}"); then
	echo "banger: the work branch $branch no longer exists in $gp" >&2
	exit 4
fi
wip=-
if cur=$(git rev-parse --verify -q 'HEAD^{commit}'); then
%[4]s	tree=$(GIT_INDEX_FILE=$idx git write-tree)
	if [ "$tree" != "$(git rev-parse "$cur^{tree}")" ]; then
		when="$(git log -1 --format=%%ct "$cur") +0000"
		wip=$(GIT_AUTHOR_NAME=banger GIT_AUTHOR_EMAIL=banger@localhost GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost GIT_AUTHOR_DATE="$when" GIT_COMMITTER_DATE="$when" git commit-tree -p "$cur" -m %[5]s "$tree")
		git update-ref %[6]s "$wip"
	else
		git update-ref -d %[6]s >/dev/null 2>&1 || true
	fi
fi
refs="refs/heads/$branch"
if [ "$wip" != - ]; then refs="$refs %[6]s"; fi
if [ -n "$(git rev-list -n 1 $refs --not "$base")" ]; then new=1; else new=0; fi
echo "$head $wip $new"
`, shq(gp), shq(branch), shq(base), indent(tempIndex), shq("banger: uncommitted work in "+gp), WIPRefInGuest)
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "\t" + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// Capture is what CaptureScript reported.
type Capture struct {
	Head string
	// WIP is the uncommitted-work commit; empty when the working tree
	// matches HEAD.
	WIP string
	// Bundle says there are commits the base does not have, so a bundle
	// is needed to carry them.
	Bundle bool
}

// ParseCapture reads CaptureScript's output strictly: one line of
// "<head> <wip or -> <0 or 1>", object names in full, lowercase, and of
// the base's length (the guest repository's object format is the
// host's). The guest is not trusted to print well-formed object names.
func ParseCapture(out, base string) (Capture, error) {
	bad := func() (Capture, error) {
		return Capture{}, fmt.Errorf("unexpected capture output %q", clip(out))
	}
	n := len(base)
	if !isObjectName(base) {
		return Capture{}, fmt.Errorf("capture: base %q is not an object name", base)
	}
	line, ok := strings.CutSuffix(out, "\n")
	if !ok || strings.Contains(line, "\n") {
		return bad()
	}
	f := strings.Split(line, " ")
	if len(f) != 3 || !isHex(f[0], n) || (f[1] != "-" && !isHex(f[1], n)) || (f[2] != "0" && f[2] != "1") {
		return bad()
	}
	c := Capture{Head: f[0], Bundle: f[2] == "1"}
	if f[1] != "-" {
		c.WIP = f[1]
	}
	return c, nil
}

// isObjectName reports whether s is a full SHA-1 or SHA-256 object name.
func isObjectName(s string) bool {
	return isHex(s, 40) || isHex(s, 64)
}

// IsObjectName reports whether s is a full hex object name.
func IsObjectName(s string) bool { return isObjectName(s) }

// BundleScript writes a git bundle of the work branch (and the wip ref)
// to standard output, with the base commit as its prerequisite, so it
// carries only the guest's new commits.
func BundleScript(gp, branch, base string, wip bool) string {
	refs := shq("refs/heads/" + branch)
	if wip {
		refs += " " + WIPRefInGuest
	}
	return fmt.Sprintf("cd -- %s && git bundle create - %s --not %s", shq(gp), refs, shq(base))
}

// GitOutput options for diff and log.
type GitOutput struct {
	// Stat shows a diffstat instead of the patch (diff), or adds one
	// (log).
	Stat bool
	// Oneline shows one line per commit (log).
	Oneline bool
	// Color asks git for colored output.
	Color bool
}

func colorFlag(o GitOutput) string {
	if o.Color {
		return "--color=always"
	}
	return "--color=never"
}

// DiffScript shows everything the guest changed since the base commit:
// commits and uncommitted work, untracked files included (through a
// temporary index).
func DiffScript(gp, base string, o GitOutput) string {
	args := "diff --cached " + colorFlag(o)
	if o.Stat {
		args += " --stat"
	}
	return fmt.Sprintf("set -eu\ncd -- %s\n%sGIT_INDEX_FILE=$idx git --no-pager %s %s --\n", shq(gp), tempIndex, args, shq(base))
}

// LogScript shows the work branch's commits since the base commit.
func LogScript(gp, branch, base string, o GitOutput) string {
	args := "log " + colorFlag(o)
	if o.Oneline {
		args += " --oneline"
	}
	if o.Stat {
		args += " --stat"
	}
	return fmt.Sprintf("set -eu\ncd -- %s\ngit --no-pager %s %s --\n", shq(gp), args, shq(base+"..refs/heads/"+branch))
}

// RenameBranchScript moves a workspace's work branch from one name to
// another in the guest (a fork's child gets its own), keeping it checked
// out. A guest whose branch is already renamed passes.
func RenameBranchScript(gp, from, to string) string {
	return fmt.Sprintf(`set -e
cd %s
if git show-ref --verify --quiet refs/heads/%s; then exit 0; fi
git branch -m %s %s
`, shq(gp), shq(to), shq(from), shq(to))
}
