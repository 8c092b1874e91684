package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/hostexec"
	"banger/internal/model"
)

// kernelRecipeVersion changes whenever the way a kernel is built changes
// (steps, flags, embedded files), so kernels built the old way get a new
// name and are rebuilt.
const kernelRecipeVersion = "1"

// The guest configuration: Firecracker's CI config for x86_64 Linux 6.1 and
// its ci.config fragment (see kernelconfig/README.md).
var (
	//go:embed kernelconfig/microvm-kernel-ci-x86_64-6.1.config
	kernelBaseConfig []byte
	//go:embed kernelconfig/ci.config
	kernelFragment []byte
)

// kernelRequiredOptions must be built in (=y) after olddefconfig, or the
// kernel cannot boot a banger guest under Firecracker: PVH entry, the
// virtio-mmio devices, the root filesystem, in-kernel ip=, the serial
// console, and the i8042 keyboard that carries Ctrl-Alt-Del.
var kernelRequiredOptions = []string{
	"CONFIG_PVH", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET",
	"CONFIG_EXT4_FS", "CONFIG_IP_PNP", "CONFIG_SERIAL_8250_CONSOLE",
	"CONFIG_SERIO_I8042", "CONFIG_KEYBOARD_ATKBD", "CONFIG_DEVTMPFS",
	"CONFIG_CGROUPS",
}

// kernelBuildPackages are the Debian packages a kernel build needs besides
// the source.
const kernelBuildPackages = "build-essential flex bison bc libelf-dev libssl-dev"

// kernelSourceDir is where Debian's linux-source-* packages put their
// tarballs.
const kernelSourceDir = "/usr/src"

// KernelOptions says which kernel to build and where.
type KernelOptions struct {
	// Dir is where kernels live (the daemon's <state dir>/kernels).
	Dir string
	// CacheDir, if set, is a machine-wide cache of kernels keyed by their
	// inputs: looked at before building, filled after.
	CacheDir string
	// Version selects the linux-source series, e.g. "6.1". Empty picks the
	// newest /usr/src/linux-source-*.tar.xz.
	Version string
	// Force rebuilds even if a kernel with the same inputs exists.
	Force bool
	// Jobs is make's -j; 0 means one per CPU.
	Jobs int
	// Logger receives progress and failures; nil discards.
	Logger *slog.Logger
}

// Kernel is a built guest kernel. The same fields are kept in a JSON
// sidecar next to the kernel (<name>.json).
type Kernel struct {
	// Name is the file name: vmlinux-<source version>-<config hash12>.
	Name          string    `json:"name"`
	Path          string    `json:"path"`
	SourceVersion string    `json:"source_version"`
	ConfigHash    string    `json:"config_hash"`
	BuiltAt       time.Time `json:"built_at"`
	SizeBytes     int64     `json:"size_bytes"`
	LogPath       string    `json:"log_path,omitempty"`
	// Reused is set when BuildKernel found the kernel already built (in
	// Dir or in the cache) instead of compiling it.
	Reused bool `json:"-"`
}

// kernelSource is a linux-source tarball and its package version.
type kernelSource struct {
	Tarball string
	// Package is the Debian package, e.g. linux-source-6.1.
	Package string
	// Series is the version in the tarball's name, e.g. "6.1".
	Series string
	// Version is the package version (6.1.192-1), or Series when the
	// tarball does not come from an installed package.
	Version string
}

// kernelDeps are the host seams of a kernel build.
type kernelDeps struct {
	steps  stepRunner
	run    hostexec.Runner
	srcDir string
	// tools reports a missing build tool; nil checks PATH.
	tools func(name string) bool
}

// BuildKernel builds (or reuses) the Firecracker guest kernel from the
// host's linux-source package and returns it. The kernel is
// opts.Dir/vmlinux-<package version>-<config hash12>, with <name>.json (the
// Kernel fields) and <name>.log (the full build log) next to it; a kernel
// with the same name is reused unless opts.Force. The build works in a
// temporary directory under opts.Dir and renames the result into place.
// progress receives a step name ("source", "extract", "configure",
// "compile", "verify", "install") and a message with the elapsed time;
// during the compile it reports every 15 s. Cancelling ctx kills the whole
// make process group and removes the temporary directory. A missing source
// package or build tool is EUNAVAILABLE with the apt-get line that fixes
// it.
func BuildKernel(ctx context.Context, opts KernelOptions, progress func(step, msg string)) (Kernel, error) {
	return buildKernel(ctx, kernelDeps{steps: procRunner{}, run: hostexec.Real{}, srcDir: kernelSourceDir}, opts, progress)
}

// KernelConfigHash returns the hash of the kernel configuration inputs
// (recipe version, base config, fragment) that names built kernels.
func KernelConfigHash() string {
	return configHash(kernelRecipeVersion, kernelBaseConfig, kernelFragment)
}

// configHash hashes the recipe version and each input with its length, so
// moving bytes from one input to the next changes the hash.
func configHash(recipe string, inputs ...[]byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "banger-kernel recipe=%s\n", recipe)
	for _, in := range inputs {
		fmt.Fprintf(h, "%d\n", len(in))
		h.Write(in)
	}
	return hex.EncodeToString(h.Sum(nil))
}

var unsafeNameChars = regexp.MustCompile(`[^A-Za-z0-9.+~_-]`)

// kernelName returns the file name of a kernel built from source version
// with the config hash: vmlinux-6.1.192-1-0123456789ab.
func kernelName(version, hash string) string {
	if len(hash) > 12 {
		hash = hash[:12]
	}
	return "vmlinux-" + unsafeNameChars.ReplaceAllString(version, "_") + "-" + hash
}

func buildKernel(ctx context.Context, deps kernelDeps, opts KernelOptions, progress func(step, msg string)) (k Kernel, err error) {
	if opts.Dir == "" {
		return Kernel{}, model.Errorf(model.EINVALID, "build kernel: no kernel directory")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	rep := newReporter(progress, opts.Logger)
	src, err := findKernelSource(ctx, deps, opts.Version)
	if err != nil {
		return Kernel{}, err
	}
	hash := KernelConfigHash()
	name := kernelName(src.Version, hash)
	path := filepath.Join(opts.Dir, name)
	rep.report("source", "%s %s (%s), config %s", src.Package, src.Version, src.Tarball, hash[:12])

	unlock, err := lockFile(ctx, filepath.Join(opts.Dir, ".lock-"+name))
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	defer unlock()

	if !opts.Force {
		if k, err := readKernel(path); err == nil {
			k.Reused = true
			rep.report("install", "reusing %s", path)
			return k, nil
		}
		if opts.CacheDir != "" {
			if k, err := kernelFromCache(opts.CacheDir, opts.Dir, name); err == nil {
				rep.report("install", "copied %s from the cache %s", name, opts.CacheDir)
				return k, nil
			}
		}
	}
	missing := []string{}
	for _, tool := range []string{"make", "gcc", "flex", "bison", "bc", "tar", "xz", "nice"} {
		has := deps.tools
		if has == nil {
			has = hostexec.Available
		}
		if !has(tool) {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return Kernel{}, model.Errorf(model.EUNAVAILABLE, "build kernel: %s not on PATH: run apt-get install %s", strings.Join(missing, ", "), kernelBuildPackages)
	}

	logPath := path + ".log"
	logf, err := os.Create(logPath)
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	defer logf.Close()
	tmp, err := os.MkdirTemp(opts.Dir, ".build-"+name+"-")
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	defer func() {
		// Removal must finish even when the build was cancelled.
		if rmErr := removeTree(tmp); rmErr != nil && err == nil {
			err = fmt.Errorf("build kernel: %w", rmErr)
		}
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w\nlast lines of %s:\n%s", err, logPath, tailFile(logPath, 15))
		}
	}()
	fmt.Fprintf(logf, "banger kernel build %s from %s (%s), recipe %s, config %s\n", name, src.Tarball, src.Version, kernelRecipeVersion, hash)

	rep.report("extract", "extracting %s (log %s)", filepath.Base(src.Tarball), logPath)
	stop := rep.every("extract", progressInterval, func() string { return "still extracting" })
	err = deps.steps.RunStep(ctx, logf, step{Argv: []string{"tar", "-xf", src.Tarball, "-C", tmp}})
	stop()
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: extract: %w", err)
	}
	srcTree, err := singleDir(tmp)
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}

	rep.report("configure", "Firecracker guest config + ci.config")
	if err := os.WriteFile(filepath.Join(srcTree, ".config"), kernelBaseConfig, 0o644); err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	fragment := filepath.Join(tmp, "banger-ci.config")
	if err := os.WriteFile(fragment, kernelFragment, 0o644); err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	for _, argv := range kernelConfigureArgv(fragment) {
		if err := deps.steps.RunStep(ctx, logf, step{Argv: argv, Dir: srcTree}); err != nil {
			return Kernel{}, fmt.Errorf("build kernel: configure: %w", err)
		}
	}
	cfg, err := os.ReadFile(filepath.Join(srcTree, ".config"))
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	if missing := missingKernelOptions(string(cfg)); len(missing) > 0 {
		return Kernel{}, model.Errorf(model.EINTERNAL, "build kernel: %s after olddefconfig lacks %s", src.Package, strings.Join(missing, ", "))
	}

	compileStart := time.Now()
	rep.report("compile", "make -j%d vmlinux (log %s)", opts.Jobs, logPath)
	counter := &logCounter{path: logPath, prefix: []byte("  CC ")}
	stop = rep.every("compile", progressInterval, func() string {
		n, _ := counter.update()
		return fmt.Sprintf("%d files compiled, %s", n, formatElapsed(time.Since(compileStart)))
	})
	err = deps.steps.RunStep(ctx, logf, step{Argv: kernelMakeArgv(opts.Jobs), Dir: srcTree, Env: kernelMakeEnv()})
	stop()
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: compile: %w", err)
	}
	n, _ := counter.update()
	rep.report("compile", "compiled %d files in %s", n, formatElapsed(time.Since(compileStart)))

	built := filepath.Join(srcTree, "vmlinux")
	if err := verifyKernel(built); err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	rep.report("verify", "ELF vmlinux with the PVH note")
	fi, err := os.Stat(built)
	if err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	k = Kernel{
		Name: name, Path: path, SourceVersion: src.Version, ConfigHash: hash,
		BuiltAt: time.Now().UTC().Truncate(time.Second), SizeBytes: fi.Size(), LogPath: logPath,
	}
	// The build tree is under Dir, so the rename is atomic and free.
	if err := os.Chmod(built, 0o644); err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	if err := os.Rename(built, path); err != nil {
		return Kernel{}, fmt.Errorf("build kernel: install: %w", err)
	}
	if err := writeKernelSidecar(k); err != nil {
		return Kernel{}, fmt.Errorf("build kernel: %w", err)
	}
	rep.report("install", "%s (%d MiB)", path, k.SizeBytes>>20)
	if opts.CacheDir != "" {
		if err := storeKernelInCache(opts.CacheDir, k); err != nil {
			// The kernel is built; a cache that cannot be written only
			// costs the next machine-wide build.
			rep.logger.Warn("kernel cache store failed", "err", err)
		}
	}
	return k, nil
}

// kernelConfigureArgv returns the configure commands, run in the source
// tree: merge the fragment into .config, then fill the rest with defaults.
func kernelConfigureArgv(fragment string) [][]string {
	return [][]string{
		{"scripts/kconfig/merge_config.sh", "-m", ".config", fragment},
		{"make", "olddefconfig"},
	}
}

// kernelMakeArgv returns the compile command. It runs niced so VMs and the
// daemon stay responsive while the kernel compiles.
func kernelMakeArgv(jobs int) []string {
	return []string{"nice", "-n", "10", "make", "-j" + strconv.Itoa(jobs), "vmlinux"}
}

// kernelMakeEnv fixes the build user and host baked into the kernel, so
// the same inputs give the same banner everywhere.
func kernelMakeEnv() []string {
	return []string{"KBUILD_BUILD_USER=banger", "KBUILD_BUILD_HOST=banger"}
}

// missingKernelOptions returns the required options that a .config does
// not build in.
func missingKernelOptions(config string) []string {
	set := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(config))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && v == "y" {
			set[k] = true
		}
	}
	var missing []string
	for _, opt := range kernelRequiredOptions {
		if !set[opt] {
			missing = append(missing, opt)
		}
	}
	return missing
}

// verifyKernel checks that path is what Firecracker boots: an ELF vmlinux
// with the PVH note.
func verifyKernel(path string) error {
	format, err := KernelFormat(path)
	if err != nil {
		return err
	}
	if format != FormatELF {
		return fmt.Errorf("verify %s: format %s, want an ELF vmlinux", path, format)
	}
	ok, err := HasPVHNote(path)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("verify %s: no Xen PVH note (CONFIG_PVH)", path)
	}
	return nil
}

var sourceTarball = regexp.MustCompile(`^linux-source-(\d+)\.(\d+)\.tar\.(xz|bz2|gz)$`)

// findKernelSource picks the linux-source tarball for the version selector
// and asks dpkg for its package version.
func findKernelSource(ctx context.Context, deps kernelDeps, selector string) (kernelSource, error) {
	entries, err := os.ReadDir(deps.srcDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return kernelSource{}, fmt.Errorf("find kernel source: %w", err)
	}
	type cand struct {
		major, minor int
		name         string
	}
	var cands []cand
	for _, e := range entries {
		m := sourceTarball.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		major, _ := strconv.Atoi(m[1])
		minor, _ := strconv.Atoi(m[2])
		if selector != "" && selector != m[1]+"."+m[2] {
			continue
		}
		cands = append(cands, cand{major, minor, e.Name()})
	}
	if len(cands) == 0 {
		pkg := "linux-source"
		if selector != "" {
			pkg = "linux-source-" + selector
		}
		return kernelSource{}, model.Errorf(model.EUNAVAILABLE, "build kernel: no %s tarball in %s: run apt-get install %s %s", pkg, deps.srcDir, pkg, kernelBuildPackages)
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].major != cands[j].major {
			return cands[i].major > cands[j].major
		}
		return cands[i].minor > cands[j].minor
	})
	c := cands[0]
	series := fmt.Sprintf("%d.%d", c.major, c.minor)
	src := kernelSource{
		Tarball: filepath.Join(deps.srcDir, c.name),
		Package: "linux-source-" + series,
		Series:  series,
		Version: series,
	}
	out, err := deps.run.Run(ctx, "dpkg-query", "-W", "-f=${Version}", src.Package)
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		src.Version = v
	}
	return src, nil
}

// singleDir returns the one directory a tarball extracted into dir.
func singleDir(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) != 1 {
		return "", fmt.Errorf("kernel source: want one top directory in the tarball, found %d", len(dirs))
	}
	return filepath.Join(dir, dirs[0]), nil
}

// ListKernels returns the kernels built in dir, newest first. A missing
// dir has none.
func ListKernels(dir string) ([]Kernel, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	var out []Kernel
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "vmlinux-") || !strings.HasSuffix(name, ".json") {
			continue
		}
		k, err := readKernel(filepath.Join(dir, strings.TrimSuffix(name, ".json")))
		if err != nil {
			continue
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].BuiltAt.Equal(out[j].BuiltAt) {
			return out[i].BuiltAt.After(out[j].BuiltAt)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// readKernel reads the sidecar of the kernel at path and checks the kernel
// is there. Paths in the result are where the files are now, whatever the
// sidecar recorded.
func readKernel(path string) (Kernel, error) {
	b, err := os.ReadFile(path + ".json")
	if err != nil {
		return Kernel{}, err
	}
	var k Kernel
	if err := json.Unmarshal(b, &k); err != nil {
		return Kernel{}, fmt.Errorf("read kernel %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Kernel{}, err
	}
	k.Name = filepath.Base(path)
	k.Path = path
	k.SizeBytes = fi.Size()
	if _, err := os.Stat(path + ".log"); err == nil {
		k.LogPath = path + ".log"
	} else {
		k.LogPath = ""
	}
	return k, nil
}

func writeKernelSidecar(k Kernel) error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(k.Path+".json", append(b, '\n'), 0o644)
}

// kernelFromCache copies a cached kernel (and its log) into dir.
func kernelFromCache(cacheDir, dir, name string) (Kernel, error) {
	cached, err := readKernel(filepath.Join(cacheDir, name))
	if err != nil {
		return Kernel{}, err
	}
	dst := filepath.Join(dir, name)
	if err := copyFileAtomic(cached.Path, dst, 0o644); err != nil {
		return Kernel{}, err
	}
	if cached.LogPath != "" {
		_ = copyFileAtomic(cached.LogPath, dst+".log", 0o644)
	}
	k := cached
	k.Path = dst
	k.LogPath = ""
	if _, err := os.Stat(dst + ".log"); err == nil {
		k.LogPath = dst + ".log"
	}
	if err := writeKernelSidecar(k); err != nil {
		return Kernel{}, err
	}
	k.Reused = true
	return k, nil
}

// storeKernelInCache copies a built kernel, its log and sidecar into the
// cache, the kernel before the sidecar that marks it complete.
func storeKernelInCache(cacheDir string, k Kernel) error {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return err
	}
	dst := filepath.Join(cacheDir, k.Name)
	if err := copyFileAtomic(k.Path, dst, 0o644); err != nil {
		return err
	}
	c := k
	c.Path = dst
	c.LogPath = ""
	if k.LogPath != "" && copyFileAtomic(k.LogPath, dst+".log", 0o644) == nil {
		c.LogPath = dst + ".log"
	}
	return writeKernelSidecar(c)
}

// copyFileAtomic copies src to a temporary file next to dst and renames it
// over dst.
func copyFileAtomic(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := writeAtomic(dst, in, mode); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// lockFile takes an exclusive flock on path, waiting until ctx ends, and
// returns the function that releases it.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
