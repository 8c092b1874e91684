package fakeos

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"banger/internal/hostexec"
)

// The storage commands: losetup, dmsetup, blockdev, and the e2fsprogs
// that internal/storage runs on image files. Loop devices and dm devices
// live in OS.Loops and OS.DM; image files are real files the test
// creates, so sizes and ext4 superblocks are read from disk.

func init() {
	register("losetup", (*OS).losetup)
	register("dmsetup", (*OS).dmsetup)
	register("blockdev", (*OS).blockdev)
	register("e2fsck", (*OS).e2fsck)
	register("resize2fs", (*OS).resize2fs)
	register("mkfs.ext4", (*OS).mkfsExt4)
	register("debugfs", (*OS).debugfs)
}

// loopMajor is the block major number of loop devices.
const loopMajor = 7

// loopNumber returns N of /dev/loopN, or -1.
func loopNumber(dev string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(dev, "/dev/loop"))
	if err != nil || !strings.HasPrefix(dev, "/dev/loop") {
		return -1
	}
	return n
}

// sortedLoops returns the loop devices in device-number order.
func (o *OS) sortedLoops() []*Loop {
	loops := make([]*Loop, 0, len(o.Loops))
	for _, l := range o.Loops {
		loops = append(loops, l)
	}
	sort.Slice(loops, func(i, j int) bool { return loopNumber(loops[i].Dev) < loopNumber(loops[j].Dev) })
	return loops
}

// loopByRef finds a loop device named as /dev/loopN or as 7:N.
func (o *OS) loopByRef(ref string) *Loop {
	if l, ok := o.Loops[ref]; ok {
		return l
	}
	if maj, min, ok := strings.Cut(ref, ":"); ok && maj == strconv.Itoa(loopMajor) {
		return o.Loops["/dev/loop"+min]
	}
	return nil
}

// realPath is the backing-file name the kernel would report: absolute,
// symlinks resolved.
func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// losetup handles `--find --show [--read-only] FILE`, `-d DEV` and
// `-l -J -O COLUMNS [-j FILE]`.
//
// Unlike the kernel, which defers the detach of a busy loop until its
// last close, `-d` of a loop that a dm device still uses fails here, so
// a test catches a teardown in the wrong order.
func (o *OS) losetup(args []string, _ string) (string, error) {
	switch {
	case len(args) >= 3 && args[0] == "--find" && args[1] == "--show":
		ro := false
		rest := args[2:]
		if rest[0] == "--read-only" {
			ro, rest = true, rest[1:]
		}
		if len(rest) != 1 {
			return "", hostexec.ErrUnexpected
		}
		file, err := realPath(rest[0])
		if err != nil {
			return fmt.Sprintf("losetup: %s: failed to set up loop device: No such file or directory\n", rest[0]), fmt.Errorf("exit status 1")
		}
		n := 0
		for o.Loops[fmt.Sprintf("/dev/loop%d", n)] != nil {
			n++
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		o.Loops[dev] = &Loop{Dev: dev, File: file, ReadOnly: ro}
		return dev + "\n", nil
	case len(args) == 2 && args[0] == "-c":
		// The new capacity is read from the file: nothing to keep.
		if o.Loops[args[1]] == nil {
			return fmt.Sprintf("losetup: %s: set capacity failed: No such device or address\n", args[1]), fmt.Errorf("exit status 1")
		}
		return "", nil
	case len(args) == 2 && args[0] == "-d":
		l := o.Loops[args[1]]
		if l == nil {
			return fmt.Sprintf("losetup: %s: detach failed: No such device or address\n", args[1]), fmt.Errorf("exit status 1")
		}
		for _, d := range o.DM {
			for _, ref := range tableDevices(d.Table) {
				if o.loopByRef(ref) == l {
					return fmt.Sprintf("fakeos: losetup: %s is still used by dm device %s\n", l.Dev, d.Name), fmt.Errorf("exit status 1")
				}
			}
		}
		for _, m := range o.Mounts {
			if m.Source == args[1] {
				// The kernel would only mark it to detach on last close.
				return "", nil
			}
		}
		delete(o.Loops, args[1])
		return "", nil
	case len(args) >= 4 && args[0] == "-l" && args[1] == "-J" && args[2] == "-O":
		cols := strings.Split(args[3], ",")
		var only string
		switch rest := args[4:]; {
		case len(rest) == 2 && rest[0] == "-j":
			p, err := realPath(rest[1])
			if err != nil {
				p = filepath.Clean(rest[1])
			}
			only = p
		case len(rest) != 0:
			return "", hostexec.ErrUnexpected
		}
		return o.loopJSON(cols, only)
	}
	return "", hostexec.ErrUnexpected
}

// loopJSON prints loop devices as `losetup -l -J -O cols` does (with
// util-linux 2.38's boolean "ro" and padded "maj:min").
func (o *OS) loopJSON(cols []string, only string) (string, error) {
	type obj = map[string]any
	devs := []obj{}
	for _, l := range o.sortedLoops() {
		if only != "" && l.File != only {
			continue
		}
		d := obj{}
		for _, c := range cols {
			switch c {
			case "NAME":
				d["name"] = l.Dev
			case "BACK-FILE":
				f := l.File
				if _, err := os.Stat(f); err != nil {
					f += " (deleted)"
				}
				d["back-file"] = f
			case "RO":
				d["ro"] = l.ReadOnly
			case "MAJ:MIN":
				d["maj:min"] = fmt.Sprintf("  %d:%d  ", loopMajor, loopNumber(l.Dev))
			default:
				return "", hostexec.ErrUnexpected
			}
		}
		devs = append(devs, d)
	}
	b, err := json.MarshalIndent(obj{"loopdevices": devs}, "", "   ")
	if err != nil {
		return "", err
	}
	return string(b) + "\n", nil
}

// tableDevices returns the device arguments of a snapshot table.
func tableDevices(table string) []string {
	f := strings.Fields(table)
	if len(f) >= 5 && f[2] == "snapshot" {
		return f[3:5]
	}
	return nil
}

// dmsetup handles `create NAME --table T` (snapshot tables over loop
// devices only), `remove NAME`, `ls [--target T]`, `table NAME`,
// `mknodes NAME` and `targets`.
func (o *OS) dmsetup(args []string, _ string) (string, error) {
	fail := func(format string, a ...any) (string, error) {
		return fmt.Sprintf(format, a...) + "\nCommand failed.\n", fmt.Errorf("exit status 1")
	}
	switch {
	case len(args) == 4 && args[0] == "create" && args[2] == "--table":
		name, table := args[1], args[3]
		if o.DM[name] != nil {
			return fail("device-mapper: create ioctl on %s  failed: Device or resource busy", name)
		}
		if err := o.checkSnapshotTable(table); err != nil {
			return fail("device-mapper: reload ioctl on %s  failed: Invalid argument (fakeos: %v)", name, err)
		}
		o.DM[name] = &DMDevice{Name: name, Table: table}
		return "", nil
	case len(args) == 2 && args[0] == "remove":
		if o.DM[args[1]] == nil {
			return fail("Device %s not found", args[1])
		}
		delete(o.DM, args[1])
		return "", nil
	case len(args) >= 1 && args[0] == "ls":
		target := ""
		switch {
		case len(args) == 3 && args[1] == "--target":
			target = args[2]
		case len(args) != 1:
			return "", hostexec.ErrUnexpected
		}
		names := make([]string, 0, len(o.DM))
		for n, d := range o.DM {
			if f := strings.Fields(d.Table); target == "" || (len(f) > 2 && f[2] == target) {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			return "No devices found\n", nil
		}
		sort.Strings(names)
		var b strings.Builder
		for i, n := range names {
			fmt.Fprintf(&b, "%s\t(253:%d)\n", n, i)
		}
		return b.String(), nil
	case len(args) == 2 && args[0] == "table":
		d := o.DM[args[1]]
		if d == nil {
			return fail("Device does not exist.")
		}
		f := strings.Fields(d.Table)
		for i := 3; i < 5 && i < len(f); i++ {
			if l := o.loopByRef(f[i]); l != nil {
				f[i] = fmt.Sprintf("%d:%d", loopMajor, loopNumber(l.Dev))
			}
		}
		return strings.Join(f, " ") + "\n", nil
	case len(args) == 2 && args[0] == "mknodes":
		if o.DM[args[1]] == nil {
			return fail("Device %s not found", args[1])
		}
		return "", nil
	case len(args) == 1 && args[0] == "targets":
		return "snapshot-merge   v1.5.0\nsnapshot         v1.16.0\nsnapshot-origin  v1.9.0\nstriped          v1.6.0\nlinear           v1.4.0\nerror            v1.6.0\n", nil
	}
	return "", hostexec.ErrUnexpected
}

// checkSnapshotTable accepts what the kernel would: "0 S snapshot ORIGIN
// COW P|N|PO CHUNK" over attached loops, S the origin's size in sectors,
// a writable COW distinct from the origin.
func (o *OS) checkSnapshotTable(table string) error {
	f := strings.Fields(table)
	if len(f) != 7 || f[0] != "0" || f[2] != "snapshot" {
		return fmt.Errorf("not a snapshot table: %q", table)
	}
	origin, cow := o.loopByRef(f[3]), o.loopByRef(f[4])
	switch {
	case origin == nil:
		return fmt.Errorf("origin %s is not an attached loop", f[3])
	case cow == nil:
		return fmt.Errorf("cow %s is not an attached loop", f[4])
	case origin == cow:
		return fmt.Errorf("origin and cow are the same device")
	case cow.ReadOnly:
		return fmt.Errorf("cow %s is read-only", cow.Dev)
	}
	if f[5] != "P" && f[5] != "N" && f[5] != "PO" {
		return fmt.Errorf("bad persistence %q", f[5])
	}
	if c, err := strconv.Atoi(f[6]); err != nil || c <= 0 || c&(c-1) != 0 {
		return fmt.Errorf("bad chunk size %q", f[6])
	}
	sz, err := fileSectors(origin.File)
	if err != nil {
		return err
	}
	if s, err := strconv.ParseInt(f[1], 10, 64); err != nil || s != sz {
		return fmt.Errorf("length %s is not the origin's %d sectors", f[1], sz)
	}
	return nil
}

func fileSectors(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size() / 512, nil
}

// blockdev handles `--getsz DEV` for loop devices, from the backing
// file's size.
func (o *OS) blockdev(args []string, _ string) (string, error) {
	if len(args) != 2 || args[0] != "--getsz" {
		return "", hostexec.ErrUnexpected
	}
	l := o.Loops[args[1]]
	if l == nil {
		return fmt.Sprintf("blockdev: cannot open %s: No such file or directory\n", args[1]), fmt.Errorf("exit status 1")
	}
	n, err := fileSectors(l.File)
	if err != nil {
		return fmt.Sprintf("blockdev: %v\n", err), fmt.Errorf("exit status 1")
	}
	return fmt.Sprintf("%d\n", n), nil
}

// ext4Magic is the ext2/3/4 superblock magic, at byte 56 of the
// superblock, which starts 1024 bytes into the filesystem.
const (
	ext4Magic       = 0xEF53
	ext4MagicOffset = 1024 + 56
)

// WriteExt4Magic marks path as holding an ext4 filesystem, as far as the
// fake e2fsprogs can tell: it writes the superblock magic.
func WriteExt4Magic(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], ext4Magic)
	_, err = f.WriteAt(b[:], ext4MagicOffset)
	return err
}

// checkExt4 fails like e2fsprogs unless path holds the ext4 magic.
func checkExt4(tool, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("%s: No such file or directory while trying to open %s\n", tool, path), fmt.Errorf("exit status 8")
	}
	defer f.Close()
	var b [2]byte
	if _, err := f.ReadAt(b[:], ext4MagicOffset); err != nil || binary.LittleEndian.Uint16(b[:]) != ext4Magic {
		return fmt.Sprintf("%s: Bad magic number in super-block while trying to open %s\n", tool, path), fmt.Errorf("exit status 8")
	}
	return "", nil
}

// e2fsck handles `-fy PATH`.
func (o *OS) e2fsck(args []string, _ string) (string, error) {
	if len(args) != 2 || args[0] != "-fy" {
		return "", hostexec.ErrUnexpected
	}
	return checkExt4("e2fsck", args[1])
}

// resize2fs handles `PATH` (grow to the file's size).
func (o *OS) resize2fs(args []string, _ string) (string, error) {
	if len(args) != 1 {
		return "", hostexec.ErrUnexpected
	}
	return checkExt4("resize2fs", args[0])
}

// debugfs handles the host key install: `-w -f - PATH` with a script
// whose `write SRC ssh_host_ed25519_key.pub` line names a readable file,
// and `-R "cat /etc/ssh/ssh_host_ed25519_key.pub" PATH`. The key is kept
// in OS.HostKeys by the disk's path.
func (o *OS) debugfs(args []string, stdin string) (string, error) {
	// The disk comes as an inherited descriptor; the key is the file's
	// own path.
	disk := args[len(args)-1]
	if p, err := os.Readlink(disk); err == nil && strings.HasPrefix(disk, "/proc/self/fd/") {
		disk = p
	}
	switch {
	case len(args) == 4 && args[0] == "-w" && args[1] == "-f" && args[2] == "-":
		if out, err := checkExt4("debugfs", disk); err != nil {
			return out, err
		}
		for _, line := range strings.Split(stdin, "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[0] == "write" && f[2] == "ssh_host_ed25519_key.pub" {
				b, err := os.ReadFile(f[1])
				if err != nil {
					return "", fmt.Errorf("fake debugfs: %v", err)
				}
				o.HostKeys[disk] = string(b)
			}
		}
		return "", nil
	case len(args) == 3 && args[0] == "-R" && args[1] == "cat /etc/ssh/ssh_host_ed25519_key.pub":
		return o.HostKeys[disk], nil
	}
	return "", hostexec.ErrUnexpected
}

// mkfsExt4 handles `-q -F -L LABEL PATH` on an existing file.
func (o *OS) mkfsExt4(args []string, _ string) (string, error) {
	if len(args) != 5 || args[0] != "-q" || args[1] != "-F" || args[2] != "-L" {
		return "", hostexec.ErrUnexpected
	}
	fi, err := os.Stat(args[4])
	if err != nil || fi.Size() < 64*1024 {
		return fmt.Sprintf("mke2fs: Device size reported to be zero or too small: %s\n", args[4]), fmt.Errorf("exit status 1")
	}
	if err := WriteExt4Magic(args[4]); err != nil {
		return fmt.Sprintf("mke2fs: %v\n", err), fmt.Errorf("exit status 1")
	}
	return "", nil
}

// StorageString prints the storage part of String: the loop and dm
// lines, so storage tests need not spell out the network state.
func (o *OS) StorageString() string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(o.String(), "\n") {
		if strings.HasPrefix(line, "loop ") || strings.HasPrefix(line, "dm ") {
			b.WriteString(line)
		}
	}
	return b.String()
}
