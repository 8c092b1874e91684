package image

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/guestinit"
	"banger/internal/hostexec"
	"banger/internal/model"
)

// ociRecipeVersion changes whenever the way an imported tree is prepared
// (before configure) changes, so cached trees made the old way are not
// reused.
const ociRecipeVersion = "1"

// ociCacheKeep is how many unpacked trees the cache keeps; the least
// recently used go first.
const ociCacheKeep = 6

// ImportOptions says what image to make from a container image.
type ImportOptions struct {
	// Name is the image's name, recorded in /etc/banger-image.
	Name string
	// OutDir is the image's artifact directory; it must not exist yet.
	OutDir string
	// CacheDir, if set, keeps unpacked trees under CacheKey.
	CacheDir string
	// CacheKey names this image's unpacked tree: the caller derives it
	// from everything that decides the tree (its layers' chain ID, whose
	// cache it is). Empty disables the cache.
	CacheKey string
	// Unpack fills root, an empty directory, with the image's layers. It
	// is not called when the cache holds the tree.
	Unpack func(ctx context.Context, root string) error
	// Guest is the image's user, environment and working directory,
	// applied to ssh sessions.
	Guest guestinit.Config
	// InitPath is the banger-init binary (static) copied into the image.
	InitPath string
	// KernelPath is the ELF vmlinux copied into the image (required).
	KernelPath string
	// SSHPublicKey is the daemon's key, authorized for root (required).
	SSHPublicKey string
	// DNS is the guest's nameserver when the kernel command line names
	// none; empty means model.DefaultDNS.
	DNS string
	// SizeBytes is the root filesystem's size; 0 fits the contents.
	SizeBytes int64
	// NetNS, when set, is the network namespace an SSH server is
	// downloaded in when the image lacks one.
	NetNS string
	// Logger receives progress and failures; nil discards.
	Logger *slog.Logger
}

// Imported is an imported image's files and what banger made of it.
type Imported struct {
	Artifacts
	// Init is InitSystemd or InitBanger.
	Init string
	// SSHInstalledWith names the package manager that installed an SSH
	// server ("" when the image had one).
	SSHInstalledWith string
}

// importTools are the host commands an import runs.
var importTools = []string{"tar", "mkfs.ext4", "e2fsck"}

// ImportImage makes a banger image from a container image's layers: the
// tree (from the cache or unpacked by opts.Unpack), an SSH server
// installed with the image's own package manager when it has none (in
// the build sandbox), banger's files (systemd units, or banger-init as
// PID 1), then today's end of a build: mkfs.ext4 -d, the work seed,
// e2fsck. Like BuildImage it works in a temporary directory and leaves
// nothing behind on failure. progress gets the steps "prepare",
// "cache", "unpack", "ssh", "configure", "rootfs", "workseed", "verify"
// and "done".
func ImportImage(ctx context.Context, opts ImportOptions, progress func(step, msg string)) (res Imported, err error) {
	return importImage(ctx, procRunner{}, hostexec.Available, opts, progress)
}

func importImage(ctx context.Context, steps stepRunner, tools func(string) bool, opts ImportOptions, progress func(step, msg string)) (res Imported, err error) {
	v, err := validateImageOptions(ImageOptions{Name: opts.Name, OutDir: opts.OutDir, KernelPath: opts.KernelPath, SSHPublicKey: opts.SSHPublicKey, DNS: opts.DNS, SizeBytes: opts.SizeBytes})
	if err != nil {
		return res, err
	}
	opts.OutDir, opts.DNS = v.OutDir, v.DNS
	if opts.Unpack == nil {
		return res, fmt.Errorf("import image: nothing to unpack")
	}
	if _, err := os.Lstat(opts.OutDir); err == nil {
		return res, model.Errorf(model.ECONFLICT, "import image: %s already exists", opts.OutDir)
	}
	if format, err := KernelFormat(opts.KernelPath); err != nil || format != FormatELF {
		return res, model.Errorf(model.EINVALID, "import image: kernel %s is not an ELF vmlinux: run banger kernel build", opts.KernelPath)
	}
	initBin, err := readStaticBinary(opts.InitPath)
	if err != nil {
		return res, err
	}
	var missing []string
	for _, t := range importTools {
		if !tools(t) {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return res, model.Errorf(model.EUNAVAILABLE, "import image: %s not on PATH: run apt-get install tar e2fsprogs", strings.Join(missing, ", "))
	}
	fingerprint, err := Fingerprint(opts.SSHPublicKey)
	if err != nil {
		return res, err
	}

	// A failed import keeps no log: its tail is in the error, and a
	// user's hostile imports must not pile files up.
	tmp, logf, done, err := startBuild(opts.OutDir, false)
	if err != nil {
		return res, err
	}
	defer done(ctx, &err)
	rep := newReporter(progress, opts.Logger)
	fmt.Fprintf(logf, "banger image import %q: recipe %s, cache key %s\n", opts.Name, ociRecipeVersion, opts.CacheKey)
	rep.report("prepare", "into %s (log %s)", opts.OutDir, logf.Name())

	root := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return res, err
	}
	hit, installed, err := importTree(ctx, steps, tools, opts, root, logf, rep)
	if err != nil {
		return res, fmt.Errorf("import image: %w", err)
	}
	res.SSHInstalledWith = installed

	r, err := openImageRoot(root)
	if err != nil {
		return res, err
	}
	facts := inspectTree(r)
	r.Close()
	res.Init = InitBanger
	if facts.systemd != "" {
		res.Init = InitSystemd
	}
	rep.report("configure", "%s as init, sshd trusting the daemon's key", res.Init)
	if err := configureOCIGuest(root, guestConfig{
		ImageName: opts.Name, AuthorizedKey: opts.SSHPublicKey, DNS: opts.DNS, BuiltAt: time.Now(),
	}, opts.Guest, initBin, facts); err != nil {
		return res, fmt.Errorf("import image: configure: %w", err)
	}
	art, err := finishImage(ctx, steps, logf, rep, tmp, root, finishOptions{
		outDir: opts.OutDir, kernel: opts.KernelPath, pubKey: opts.SSHPublicKey,
		fingerprint: fingerprint, size: opts.SizeBytes, cacheHit: hit,
	})
	res.Artifacts = art
	return res, err
}

// importTree fills root: from the cache, or by unpacking the layers and
// installing an SSH server when the image has none (then stored in the
// cache). It refuses an image banger cannot boot and reach.
func importTree(ctx context.Context, steps stepRunner, tools func(string) bool, opts ImportOptions, root string, logf *os.File, rep *reporter) (hit bool, installed string, err error) {
	var cached string
	if opts.CacheDir != "" && opts.CacheKey != "" {
		if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
			return false, "", fmt.Errorf("cache: %w", err)
		}
		cached = filepath.Join(opts.CacheDir, "oci-"+opts.CacheKey+".tar")
		unlock, err := lockFile(ctx, cached+".lock")
		if err != nil {
			return false, "", fmt.Errorf("cache: %w", err)
		}
		// A refused import stores no tree and keeps no lock file either,
		// so hostile imports (each its own key) pile nothing up. The lock
		// only saves a second unpack: a tree is stored by rename, so two
		// imports that raced past a removed lock are still correct.
		defer func() {
			if _, err := os.Stat(cached); err != nil {
				os.Remove(cached + ".lock")
			}
			unlock()
		}()
		if _, err := os.Stat(cached); err == nil {
			rep.report("cache", "layers already unpacked: %s", cached)
			if err := steps.RunStep(ctx, logf, step{Argv: tarExtractArgv(cached, root)}); err != nil {
				return false, "", fmt.Errorf("cache: %w", err)
			}
			now := time.Now()
			_ = os.Chtimes(cached, now, now)
			note, _ := os.ReadFile(cached + ".json")
			var n struct {
				SSH string `json:"ssh_installed_with"`
			}
			_ = json.Unmarshal(note, &n)
			return true, n.SSH, nil
		}
	}
	rep.report("unpack", "applying the image's layers")
	if err := opts.Unpack(ctx, root); err != nil {
		return false, "", err
	}
	r, err := openImageRoot(root)
	if err != nil {
		return false, "", err
	}
	defer r.Close()
	facts := inspectTree(r)
	if !facts.shell {
		return false, "", model.Errorf(model.EINVALID, "the image has no /bin/sh: banger needs a shell in the image for ssh sessions; build it on a base with one")
	}
	if !facts.root {
		return false, "", model.Errorf(model.EINVALID, "the image's /etc/passwd has no root account: banger logs in as root; build it on a base with one")
	}
	if facts.sshd == "" {
		if facts.pm == nil {
			return false, "", model.Errorf(model.EINVALID, "the image has no SSH server (sshd in %s) and no package manager banger can install one with (%s): install openssh-server in the image", strings.Join(sshdPaths, ", "), pmNames())
		}
		if !tools("chroot") || !tools("mount") || !tools("unshare") {
			return false, "", model.Errorf(model.EUNAVAILABLE, "import image: chroot, mount or unshare not on PATH: run apt-get install coreutils mount util-linux")
		}
		rep.report("ssh", "the image has no SSH server: installing openssh-server with %s (sandboxed)", facts.pm.name)
		if err := installSSH(ctx, steps, logf, r, root, facts.pm, opts.NetNS); err != nil {
			return false, "", fmt.Errorf("install an SSH server with %s: %w", facts.pm.name, err)
		}
		if firstExisting(r, sshdPaths) == "" {
			return false, "", model.Errorf(model.EINVALID, "%s installed openssh-server but the image still has no sshd", facts.pm.name)
		}
		installed = facts.pm.name
	}
	if cached == "" {
		return false, installed, nil
	}
	rep.report("cache", "storing the unpacked layers in %s", cached)
	if err := storeTree(ctx, steps, logf, root, cached, opts, installed); err != nil {
		// The image can still be built; only the next import pays again.
		rep.logger.Warn("image cache store failed", "err", err)
		fmt.Fprintf(logf, "cache store failed: %v\n", err)
	}
	pruneOCICache(opts.CacheDir, ociCacheKeep)
	return false, installed, nil
}

// installSSH installs openssh-server with the image's package manager in
// the build sandbox: a user namespace whose root is no one on the host
// (the tree's owners are shifted to its ids and back), its own PID and
// mount namespaces, the downloads in netns. The package manager is the
// image's own binary, which anyone may have made: it never runs as the
// host's root.
func installSSH(ctx context.Context, steps stepRunner, logf *os.File, r *imageRoot, root string, pm *packageManager, netns string) error {
	for _, d := range []string{"/dev", "/proc", "/tmp"} {
		if err := checkDir(r, d); err != nil {
			return model.Errorf(model.EINVALID, "%v", err)
		}
	}
	// The package manager resolves the mirror's name with the host's
	// resolver; no service starts inside the build.
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	if err := r.WriteFile("/etc/resolv.conf", resolv, 0o644); err != nil {
		return err
	}
	if err := r.WriteFile("/usr/sbin/policy-rc.d", []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return err
	}
	if err := shiftOwners(root, 0, sandboxUIDBase); err != nil {
		return err
	}
	dir, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	err = steps.RunStep(ctx, logf, step{Argv: sandboxArgv(pm.script), Isolate: true, Sandbox: true, NetNS: netns, Files: []*os.File{dir}})
	dir.Close()
	if err != nil {
		return err
	}
	if err := shiftOwners(root, sandboxUIDBase, 0); err != nil {
		return err
	}
	return r.RemoveGlob("/usr/sbin/policy-rc.d")
}

// sandboxArgv runs script in the tree passed as descriptor 3: with the
// host's shell and tools it enters the tree, makes its own mount
// namespace (after the cd, so the working directory is the new
// namespace's copy of the tree and mounts on it work: the descriptor
// itself names the host's), mounts a small /dev (null, zero, full,
// random, urandom, tty bound from the host: the sandbox's root cannot
// open the host's other devices anyway) and /proc, then chroots into the
// tree and runs script with the image's /bin/sh. The tree is reached
// through the descriptor because the sandbox cannot search the daemon's
// directories.
func sandboxArgv(script string) []string {
	enter := `cd /proc/self/fd/3 && exec unshare --mount --propagation private /bin/sh -c "$1" banger-sandbox "$2"`
	inside := `set -eu
mount -t tmpfs -o mode=0755,size=1m banger-dev dev
for d in null zero full random urandom tty; do
	: >"dev/$d"
	mount --bind "/dev/$d" "dev/$d"
done
ln -s /proc/self/fd dev/fd
mount -t proc proc proc
exec chroot . /bin/sh -c "$1"`
	return []string{"/bin/sh", "-c", enter, "banger-sandbox", inside, script}
}

// storeTree archives root into the cache under a temporary name, renames
// it into place and writes its note.
func storeTree(ctx context.Context, steps stepRunner, logf *os.File, root, cached string, opts ImportOptions, installed string) error {
	tmp := cached + ".tmp-" + randomSuffix()
	defer os.Remove(tmp)
	if err := steps.RunStep(ctx, logf, step{Argv: tarCreateArgv(root, tmp)}); err != nil {
		return err
	}
	if err := os.Rename(tmp, cached); err != nil {
		return err
	}
	note, _ := json.MarshalIndent(map[string]any{
		"recipe": ociRecipeVersion, "key": opts.CacheKey, "ssh_installed_with": installed,
		"created_at": time.Now().UTC().Format(time.RFC3339),
	}, "", "  ")
	return writeFileAtomic(cached+".json", append(note, '\n'), 0o644)
}

// pruneOCICache keeps the keep most recently used trees.
func pruneOCICache(dir string, keep int) {
	matches, _ := filepath.Glob(filepath.Join(dir, "oci-*.tar"))
	type entry struct {
		path string
		used time.Time
	}
	var es []entry
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil {
			es = append(es, entry{m, fi.ModTime()})
		}
	}
	sort.Slice(es, func(i, j int) bool { return es[i].used.After(es[j].used) })
	for _, e := range es[min(keep, len(es)):] {
		unlock, err := lockFile(context.Background(), e.path+".lock")
		if err != nil {
			continue
		}
		os.Remove(e.path)
		os.Remove(e.path + ".json")
		unlock()
		os.Remove(e.path + ".lock")
	}
}

// readStaticBinary reads banger-init and checks it is a static x86-64
// ELF: it runs in images whatever their libc.
func readStaticBinary(path string) ([]byte, error) {
	if path == "" {
		return nil, model.Errorf(model.EUNAVAILABLE, "import image: no banger-init binary: install it next to bangerd (scripts/build.sh builds it)")
	}
	f, err := elf.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, model.Errorf(model.EUNAVAILABLE, "import image: banger-init is missing at %s: install it next to bangerd (scripts/build.sh builds it)", path)
		}
		return nil, model.Errorf(model.EUNAVAILABLE, "import image: banger-init at %s: %v", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, model.Errorf(model.EUNAVAILABLE, "import image: banger-init at %s is not an x86-64 binary", path)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, model.Errorf(model.EUNAVAILABLE, "import image: banger-init at %s is dynamically linked; build it with CGO_ENABLED=0 (scripts/build.sh does)", path)
		}
	}
	return os.ReadFile(path)
}
