package image

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// ImageOptions says what image to build and where.
type ImageOptions struct {
	// Name is the image's name, recorded in /etc/banger-image.
	Name string
	// OutDir is the image's artifact directory; it must not exist yet.
	OutDir string
	// CacheDir, if set, keeps base systems (debootstrap plus packages)
	// keyed by their inputs, so the next build with the same inputs skips
	// the download.
	CacheDir string
	// Release is the Debian release; empty means the host's.
	Release string
	// Mirror is the Debian archive; empty means the one the host's apt
	// uses for Release.
	Mirror string
	// Packages are installed on top of the base packages.
	Packages []string
	// Docker installs Debian's docker.io and enables it.
	Docker bool
	// KernelPath is the ELF vmlinux copied into the image (required).
	KernelPath string
	// SSHPublicKey is the daemon's key, authorized for root (required).
	SSHPublicKey string
	// DNS is the guest's nameserver when the kernel command line names
	// none; empty means model.DefaultDNS.
	DNS string
	// SizeBytes is the root filesystem's size; 0 fits the contents with
	// headroom.
	SizeBytes int64
	// NetNS, when set, is the network namespace (a file such as
	// /run/netns/NAME) the downloads run in.
	NetNS string
	// Keyring, when set, is the keyring debootstrap must check the
	// mirror's Release file with (it fails rather than go on unchecked):
	// a mirror a user named may serve only what Debian signed, since its
	// packages' scripts run as root in the build's chroot.
	Keyring string
	// Logger receives progress and failures; nil discards.
	Logger *slog.Logger
}

// Artifacts are the files of a built image, all inside OutDir.
type Artifacts struct {
	RootfsPath   string
	KernelPath   string
	WorkSeedPath string
	// BuildSize is the root filesystem's size (model.FormatSizeBytes).
	BuildSize string
	// SSHKeyFingerprint is the SHA256 fingerprint of the authorized key.
	SSHKeyFingerprint string
	LogPath           string
	// CacheHit is set when the base system came from CacheDir.
	CacheHit bool
}

// File names inside an image's artifact directory.
const (
	rootfsFile   = "rootfs.ext4"
	kernelFile   = "vmlinux"
	workSeedFile = "work-seed.ext4"
	logFile      = "build.log"
)

const (
	// workSeedSize is the size of the work seed; the daemon grows each
	// VM's copy to the VM's work disk size.
	workSeedSize = 64 << 20
	// sizeAlign rounds image sizes so they print as whole MiB or GiB.
	sizeAlign = 64 << 20
	// rootfsHeadroom is free space left in a fitted root filesystem, on top
	// of a fifth of its contents, for what users install later (a guest's
	// root filesystem is as large as its image's). The file is sparse, so
	// unused headroom costs no disk.
	rootfsHeadroom = 1 << 30
)

// imageTools are the host commands a build runs, and the packages that
// provide them.
var imageTools = []string{"debootstrap", "chroot", "tar", "mkfs.ext4", "e2fsck"}

const imageToolPackages = "debootstrap coreutils tar e2fsprogs"

// imageDeps are the host seams of an image build.
type imageDeps struct {
	steps       stepRunner
	tools       func(name string) bool
	hostRelease func() (string, error)
	hostMirror  func(release string) (string, error)
	now         func() time.Time
}

// BuildImage builds a Debian image for banger: root filesystem, kernel and
// work seed in opts.OutDir. It works in OutDir+".tmp-<random>" and renames
// that to OutDir at the end; on failure or cancellation it removes
// everything it made (the log survives as OutDir+".failed.log"), and no
// mount or loop device is ever made on the host. progress receives a step
// name ("prepare", "debootstrap", "packages", "cache", "configure",
// "rootfs", "workseed", "verify", "done") and a message with the elapsed
// time.
func BuildImage(ctx context.Context, opts ImageOptions, progress func(step, msg string)) (Artifacts, error) {
	return buildImage(ctx, imageDeps{
		steps:       procRunner{},
		tools:       hostexec.Available,
		hostRelease: HostRelease,
		hostMirror:  HostMirror,
		now:         time.Now,
	}, opts, progress)
}

// validateImageOptions checks opts and fills the defaults that need no
// host lookups.
func validateImageOptions(opts ImageOptions) (ImageOptions, error) {
	if strings.TrimSpace(opts.Name) == "" {
		return opts, model.Errorf(model.EINVALID, "build image: no image name")
	}
	if opts.OutDir == "" || !filepath.IsAbs(opts.OutDir) {
		return opts, model.Errorf(model.EINVALID, "build image: output directory %q is not an absolute path", opts.OutDir)
	}
	opts.OutDir = filepath.Clean(opts.OutDir)
	if opts.KernelPath == "" {
		return opts, model.Errorf(model.EINVALID, "build image: no kernel: run banger kernel build, or pass a vmlinux")
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(opts.SSHPublicKey)); err != nil {
		return opts, model.Errorf(model.EINVALID, "build image: ssh public key: %w", err)
	}
	if opts.DNS == "" {
		opts.DNS = model.DefaultDNS
	}
	if ip := net.ParseIP(opts.DNS); ip == nil {
		return opts, model.Errorf(model.EINVALID, "build image: DNS server %q is not an IP address", opts.DNS)
	}
	if opts.SizeBytes < 0 {
		return opts, model.Errorf(model.EINVALID, "build image: negative size")
	}
	for _, p := range opts.Packages {
		if !packageName.MatchString(strings.TrimSpace(p)) {
			return opts, model.Errorf(model.EINVALID, "build image: %q is not a Debian package name", p)
		}
	}
	if opts.Mirror != "" {
		if err := ValidateMirror(opts.Mirror); err != nil {
			return opts, err
		}
	}
	if opts.Keyring != "" {
		if fi, err := os.Stat(opts.Keyring); err != nil || !fi.Mode().IsRegular() {
			return opts, model.Errorf(model.EUNAVAILABLE, "build image: keyring %s is missing, and a mirror given to a build must be checked against it: install debian-archive-keyring", opts.Keyring)
		}
	}
	if opts.Release != "" && !packageName.MatchString(opts.Release) {
		return opts, model.Errorf(model.EINVALID, "build image: %q is not a Debian release name", opts.Release)
	}
	return opts, nil
}

func buildImage(ctx context.Context, deps imageDeps, opts ImageOptions, progress func(step, msg string)) (art Artifacts, err error) {
	opts, err = validateImageOptions(opts)
	if err != nil {
		return Artifacts{}, err
	}
	if _, err := os.Lstat(opts.OutDir); err == nil {
		return Artifacts{}, model.Errorf(model.ECONFLICT, "build image: %s already exists", opts.OutDir)
	}
	format, err := KernelFormat(opts.KernelPath)
	if err != nil {
		return Artifacts{}, model.Errorf(model.EINVALID, "build image: %w", err)
	}
	if format != FormatELF {
		return Artifacts{}, model.Errorf(model.EINVALID, "build image: kernel %s is %s, not an ELF vmlinux; Firecracker boots only an uncompressed vmlinux: run banger kernel build", opts.KernelPath, format)
	}
	var missing []string
	for _, t := range imageTools {
		if !deps.tools(t) {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return Artifacts{}, model.Errorf(model.EUNAVAILABLE, "build image: %s not on PATH: run apt-get install %s", strings.Join(missing, ", "), imageToolPackages)
	}
	if opts.Release == "" {
		if opts.Release, err = deps.hostRelease(); err != nil {
			return Artifacts{}, err
		}
	}
	if opts.Mirror == "" {
		if opts.Mirror, err = deps.hostMirror(opts.Release); err != nil {
			return Artifacts{}, err
		}
	}
	fingerprint, err := Fingerprint(opts.SSHPublicKey)
	if err != nil {
		return Artifacts{}, err
	}

	tmp, logf, done, err := startBuild(opts.OutDir, true)
	if err != nil {
		return Artifacts{}, err
	}
	defer done(ctx, &err)
	logPath := logf.Name()
	rep := newReporter(progress, opts.Logger)
	fmt.Fprintf(logf, "banger image build %q: release %s, mirror %s, recipe %s, packages %s\n",
		opts.Name, opts.Release, opts.Mirror, imageRecipeVersion, strings.Join(append(append([]string{}, basePackages...), extraPackages(opts.Packages, opts.Docker)...), " "))
	rep.report("prepare", "Debian %s from %s into %s (log %s)", opts.Release, opts.Mirror, opts.OutDir, logPath)

	root := filepath.Join(tmp, "rootfs")
	hit, err := baseSystem(ctx, deps, opts, root, logf, rep)
	if err != nil {
		return Artifacts{}, fmt.Errorf("build image: %w", err)
	}

	rep.report("configure", "banger units, sshd, first-boot host keys")
	if err := configureGuest(root, guestConfig{
		ImageName: opts.Name, AuthorizedKey: opts.SSHPublicKey, DNS: opts.DNS,
		Docker: opts.Docker, BuiltAt: deps.now(),
	}); err != nil {
		return Artifacts{}, fmt.Errorf("build image: %w", err)
	}
	return finishImage(ctx, deps.steps, logf, rep, tmp, root, finishOptions{
		outDir: opts.OutDir, kernel: opts.KernelPath, pubKey: opts.SSHPublicKey,
		fingerprint: fingerprint, size: opts.SizeBytes, cacheHit: hit,
	})
}

// startBuild makes the temporary directory and the log of a build of
// outDir. The returned done, deferred with the build's error, removes
// everything the build made when it failed (even when cancelled), keeps
// the log as outDir+".failed.log" when keepLog says so, and adds the
// log's tail to the error.
func startBuild(outDir string, keepLog bool) (tmp string, logf *os.File, done func(ctx context.Context, errp *error), err error) {
	if err := os.MkdirAll(filepath.Dir(outDir), 0o755); err != nil {
		return "", nil, nil, fmt.Errorf("build image: %w", err)
	}
	tmp = outDir + ".tmp-" + randomSuffix()
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return "", nil, nil, fmt.Errorf("build image: %w", err)
	}
	logPath := filepath.Join(tmp, logFile)
	logf, err = os.Create(logPath)
	if err != nil {
		os.Remove(tmp)
		return "", nil, nil, fmt.Errorf("build image: %w", err)
	}
	failedLog := outDir + ".failed.log"
	done = func(ctx context.Context, errp *error) {
		logf.Close()
		if *errp == nil {
			_ = os.Remove(failedLog)
			return
		}
		tail := tailFile(logPath, 15)
		where := "the build log"
		if keepLog {
			_ = os.Rename(logPath, failedLog)
			where = "log " + failedLog
		}
		// Removal must finish even when the build was cancelled.
		if rmErr := removeTree(tmp); rmErr != nil {
			*errp = errors.Join(*errp, rmErr)
		}
		// An import refused for its input (EINVALID) ran no host command
		// worth showing: its log holds only its first line.
		if ctx.Err() == nil && tail != "" && (keepLog || model.ErrorCode(*errp) != model.EINVALID) {
			*errp = fmt.Errorf("%w\n%s ends with:\n%s", *errp, where, tail)
		}
	}
	return tmp, logf, done, nil
}

// finishOptions are what the end of every image build needs.
type finishOptions struct {
	outDir, kernel, pubKey, fingerprint string
	// size is the root filesystem's size; 0 fits the contents.
	size     int64
	cacheHit bool
}

// finishImage is the end of every image build: the kernel copied in, the
// root filesystem made from root with mkfs.ext4 -d, the work seed with
// root's dotfiles and the daemon's key, both checked with e2fsck, the
// trees removed and tmp renamed to the image's directory.
func finishImage(ctx context.Context, steps stepRunner, logf *os.File, rep *reporter, tmp, root string, f finishOptions) (Artifacts, error) {
	if err := copyFileAtomic(f.kernel, filepath.Join(tmp, kernelFile), 0o644); err != nil {
		return Artifacts{}, fmt.Errorf("build image: copy kernel: %w", err)
	}
	size := f.size
	if size == 0 {
		used, err := treeUsage(root)
		if err != nil {
			return Artifacts{}, fmt.Errorf("build image: %w", err)
		}
		size = fitSize(used)
	}
	rep.report("rootfs", "mkfs.ext4 -d, %s", model.FormatSizeBytes(size))
	rootfs := filepath.Join(tmp, rootfsFile)
	if err := makeExt4(ctx, steps, logf, RootfsLabel, root, rootfs, size); err != nil {
		return Artifacts{}, fmt.Errorf("build image: root filesystem: %w", err)
	}

	rep.report("workseed", "work seed with root's home")
	seedDir := filepath.Join(tmp, "workseed")
	if err := makeWorkSeedDir(root, seedDir, f.pubKey); err != nil {
		return Artifacts{}, fmt.Errorf("build image: %w", err)
	}
	seed := filepath.Join(tmp, workSeedFile)
	if err := makeExt4(ctx, steps, logf, WorkDiskLabel, seedDir, seed, workSeedSize); err != nil {
		return Artifacts{}, fmt.Errorf("build image: work seed: %w", err)
	}

	rep.report("verify", "e2fsck -fn")
	for _, img := range []string{rootfs, seed} {
		if err := steps.RunStep(ctx, logf, step{Argv: fsckArgv(img)}); err != nil {
			return Artifacts{}, fmt.Errorf("build image: verify: %w", err)
		}
	}
	for _, d := range []string{root, seedDir} {
		if err := removeTree(d); err != nil {
			return Artifacts{}, fmt.Errorf("build image: %w", err)
		}
	}
	if err := os.Rename(tmp, f.outDir); err != nil {
		return Artifacts{}, fmt.Errorf("build image: %w", err)
	}
	art := Artifacts{
		RootfsPath:        filepath.Join(f.outDir, rootfsFile),
		KernelPath:        filepath.Join(f.outDir, kernelFile),
		WorkSeedPath:      filepath.Join(f.outDir, workSeedFile),
		BuildSize:         model.FormatSizeBytes(size),
		SSHKeyFingerprint: f.fingerprint,
		LogPath:           filepath.Join(f.outDir, logFile),
		CacheHit:          f.cacheHit,
	}
	rep.report("done", "%s (%s root filesystem)", f.outDir, art.BuildSize)
	return art, nil
}

// baseSystem fills root with the base system: from the cache when it holds
// one for these inputs, else by debootstrap and apt-get (then stored in
// the cache). It reports whether the cache had it.
func baseSystem(ctx context.Context, deps imageDeps, opts ImageOptions, root string, logf *os.File, rep *reporter) (bool, error) {
	extra := extraPackages(opts.Packages, opts.Docker)
	key := baseCacheKey(opts.Release, opts.Mirror, extra)
	var cached string
	if opts.CacheDir != "" {
		if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
			return false, fmt.Errorf("cache: %w", err)
		}
		cached = filepath.Join(opts.CacheDir, baseCacheName(opts.Release, key))
		// One build per key fills the cache; the others wait and reuse it.
		unlock, err := lockFile(ctx, cached+".lock")
		if err != nil {
			return false, fmt.Errorf("cache: %w", err)
		}
		defer unlock()
		if _, err := os.Stat(cached); err == nil {
			rep.report("cache", "base system from %s", cached)
			if err := os.Mkdir(root, 0o755); err != nil {
				return false, err
			}
			if err := deps.steps.RunStep(ctx, logf, step{Argv: tarExtractArgv(cached, root)}); err != nil {
				return false, fmt.Errorf("cache: %w", err)
			}
			return true, nil
		}
	}

	rep.report("debootstrap", "debootstrap --variant=minbase %s", opts.Release)
	counter := &logCounter{path: logf.Name()}
	status := func() string {
		_, last := counter.update()
		return "still running: " + truncate(last, 100)
	}
	stop := rep.every("debootstrap", progressInterval, status)
	wgetrc := filepath.Join(filepath.Dir(root), "wgetrc")
	if err := os.WriteFile(wgetrc, []byte(fetchLimits), 0o644); err != nil {
		stop()
		return false, fmt.Errorf("debootstrap: %w", err)
	}
	err := deps.steps.RunStep(ctx, logf, step{Argv: debootstrapArgv(opts.Release, opts.Mirror, root, opts.Keyring), Env: []string{"WGETRC=" + wgetrc}, Isolate: true, NetNS: opts.NetNS})
	os.Remove(wgetrc)
	stop()
	if err != nil {
		return false, fmt.Errorf("debootstrap: %w", err)
	}
	r, err := openImageRoot(root)
	if err != nil {
		return false, err
	}
	defer r.Close()
	if len(extra) > 0 {
		rep.report("packages", "apt-get install %s", strings.Join(extra, " "))
		// No package starts its service inside the build's chroot.
		if err := r.WriteFile("/usr/sbin/policy-rc.d", []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return false, err
		}
		stop := rep.every("packages", progressInterval, status)
		err := deps.steps.RunStep(ctx, logf, step{Argv: packagesArgv(root, extra), Isolate: true, NetNS: opts.NetNS})
		stop()
		if err != nil {
			return false, fmt.Errorf("packages: %w", err)
		}
	}
	if err := sanitizeBase(r); err != nil {
		return false, err
	}
	if cached == "" {
		return false, nil
	}
	rep.report("cache", "storing the base system in %s", cached)
	if err := storeBase(ctx, deps, logf, root, cached, opts, extra); err != nil {
		// The image can still be built; only the next build pays again.
		rep.logger.Warn("image cache store failed", "err", err)
		fmt.Fprintf(logf, "cache store failed: %v\n", err)
	}
	return false, nil
}

// sanitizeBase removes what must not be cached or shipped: the build
// host's identity, host keys, package indexes and downloaded archives.
func sanitizeBase(r *imageRoot) error {
	for _, p := range guestRemovals {
		if err := r.RemoveGlob(p); err != nil {
			return err
		}
	}
	for _, p := range []string{"/var/lib/apt/lists", "/var/cache/apt/archives/partial"} {
		if err := r.RemoveAllIn(p); err != nil {
			return err
		}
	}
	for _, p := range []string{"/var/cache/apt/*.bin", "/var/cache/apt/archives/*.deb", "/etc/resolv.conf"} {
		if err := r.RemoveGlob(p); err != nil {
			return err
		}
	}
	return r.WriteFile("/etc/machine-id", nil, 0o444)
}

// storeBase archives root into the cache under a temporary name and
// renames it into place, with a JSON note of its inputs.
func storeBase(ctx context.Context, deps imageDeps, logf *os.File, root, cached string, opts ImageOptions, extra []string) error {
	tmp := cached + ".tmp-" + randomSuffix()
	defer os.Remove(tmp)
	if err := deps.steps.RunStep(ctx, logf, step{Argv: tarCreateArgv(root, tmp)}); err != nil {
		return err
	}
	if err := os.Rename(tmp, cached); err != nil {
		return err
	}
	note, _ := json.MarshalIndent(map[string]any{
		"release": opts.Release, "mirror": opts.Mirror, "recipe": imageRecipeVersion,
		"base_packages": basePackages, "extra_packages": extra,
		"created_at": deps.now().UTC().Format(time.RFC3339),
	}, "", "  ")
	return writeFileAtomic(cached+".json", append(note, '\n'), 0o644)
}

// configureGuest writes banger's files into the image root.
func configureGuest(root string, c guestConfig) error {
	r, err := openImageRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, p := range guestRemovals {
		if err := r.RemoveGlob(p); err != nil {
			return err
		}
	}
	for _, p := range guestEmptied {
		if err := r.RemoveAllIn(p); err != nil {
			return err
		}
	}
	if err := r.MkdirAll("/root/.ssh", 0o700); err != nil {
		return err
	}
	for _, f := range guestFiles(c) {
		if f.Link != "" {
			err = r.Symlink(f.Link, f.Path)
		} else {
			err = r.WriteFile(f.Path, []byte(f.Content), f.Mode)
		}
		if err != nil {
			return err
		}
	}
	if c.Docker && !r.Exists("/lib/systemd/system/docker.service") {
		return fmt.Errorf("configure: docker.io installed no docker.service")
	}
	return nil
}

// makeWorkSeedDir lays out the work disk's contents: root's home with the
// shell dotfiles of the image and the daemon's key.
func makeWorkSeedDir(root, dir, pubKey string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	r, err := openImageRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	s, err := openImageRoot(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	for _, name := range []string{".bashrc", ".profile"} {
		b, err := r.ReadFile("/root/" + name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := s.WriteFile("/"+name, b, 0o644); err != nil {
			return err
		}
	}
	if err := s.MkdirAll("/.ssh", 0o700); err != nil {
		return err
	}
	return s.WriteFile("/.ssh/authorized_keys", []byte(strings.TrimSpace(pubKey)+"\n"), 0o600)
}

// makeExt4 creates img as a sparse file of size bytes and formats it as
// ext4 holding dir's contents.
func makeExt4(ctx context.Context, steps stepRunner, logf *os.File, label, dir, img string, size int64) error {
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return steps.RunStep(ctx, logf, step{Argv: mkfsArgv(label, dir, img)})
}

// treeUsage returns the bytes dir's contents take in 4 KiB blocks, plus an
// inode's worth per entry. It never follows symlinks.
func treeUsage(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		total += 256
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += (info.Size() + 4095) &^ 4095
		} else if d.IsDir() {
			total += 4096
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure %s: %w", dir, err)
	}
	return total, nil
}

// fitSize returns a root filesystem size for used bytes of contents: a
// fifth more for ext4's metadata and journal, plus headroom, rounded up to
// 64 MiB.
func fitSize(used int64) int64 {
	size := used + used/5 + rootfsHeadroom
	return (size + sizeAlign - 1) / sizeAlign * sizeAlign
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
