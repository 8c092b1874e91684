package qemuvmm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// A banger-vmm-qemu snapshot is two files, as Firecracker's is:
//
//   - the state file (snapshot_path): a magic line with the format
//     version, the VM's configuration as JSON (machine, kernel command
//     line, drives with their sizes, network interfaces, the QEMU version
//     and accelerator, the memory file's layout and checksum), and a
//     CRC-32C line. A fresh banger-vmm-qemu needs nothing else to rebuild
//     the same machine.
//   - the memory file (mem_file_path): a 4 KiB header (magic, the
//     snapshot's id, the layout), the guest's memory as a sparse image
//     (only the non-zero pages are written, the rest are holes), then
//     QEMU's migration stream of the device state.
//
// Both are written under no name (O_TMPFILE) and linked in when complete,
// the memory file first; the id ties the pair together, the recorded size
// tells a whole memory file from a partial one, and the checksum of the
// memory pages is checked as they are loaded.

// SnapshotFormat is the version of the snapshot files this build writes
// and reads.
const SnapshotFormat = 2

const snapshotFormat = SnapshotFormat

const (
	stateMagic   = "banger-vmm-qemu-snapshot v"
	memMagic     = "BNGRMEM2"
	memHeaderLen = 4096
	// maxStateFile bounds what is read of a state file.
	maxStateFile = 1 << 20
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// snapshotState is the state file's JSON.
type snapshotState struct {
	// ID ties the state file to its memory file (hex).
	ID          string    `json:"id"`
	VMMVersion  string    `json:"vmm_version"`
	QEMUVersion string    `json:"qemu_version"`
	Created     time.Time `json:"created"`
	Accel       string    `json:"accel"`
	// MemFileSize is the memory file's full size, header included.
	MemFileSize int64 `json:"mem_file_size"`
	// RAMSize is the guest memory's size; it sits in the memory file
	// after the header, followed by StreamLength bytes of device state.
	RAMSize      int64 `json:"ram_size"`
	StreamLength int64 `json:"stream_length"`
	// RAMCRC is the CRC-32C of the non-zero pages with their offsets,
	// RAMBytes their total size.
	RAMCRC   uint32 `json:"ram_crc32c"`
	RAMBytes int64  `json:"ram_bytes"`

	VCPUs  int  `json:"vcpu_count"`
	SMT    bool `json:"smt"`
	MemMiB int  `json:"mem_size_mib"`
	// Kernel and Initrd are the paths the VM was configured with (they
	// may name descriptors); KernelELF says the kernel was an ELF booted
	// by PVH, which a load can replace with a stand-in.
	Kernel    string `json:"kernel_image_path"`
	Initrd    string `json:"initrd_path,omitempty"`
	KernelELF bool   `json:"kernel_elf"`
	Cmdline   string `json:"cmdline"`

	Drives   []snapshotDrive `json:"drives"`
	NICs     []snapshotNIC   `json:"network_interfaces"`
	VsockCID uint32          `json:"vsock_cid,omitempty"`
	VsockUDS string          `json:"vsock_uds_path,omitempty"`
	Balloon  *balloonConfig  `json:"balloon,omitempty"`
	Entropy  *entropyConfig  `json:"entropy,omitempty"`
}

type snapshotDrive struct {
	ID       string   `json:"drive_id"`
	Path     string   `json:"path_on_host"`
	Root     bool     `json:"is_root_device"`
	ReadOnly bool     `json:"is_read_only"`
	Cache    string   `json:"cache_type"`
	PartUUID string   `json:"partuuid,omitempty"`
	Throttle Throttle `json:"throttle,omitzero"`
	// Size is the drive's size in bytes when the snapshot was taken.
	Size int64 `json:"size"`
}

type snapshotNIC struct {
	ID  string `json:"iface_id"`
	Tap string `json:"host_dev_name"`
	MAC string `json:"guest_mac,omitempty"`
	MTU int    `json:"mtu,omitempty"`
}

// encodeState renders a state file.
func encodeState(st snapshotState) ([]byte, error) {
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s%d\n", stateMagic, snapshotFormat)
	b.Write(raw)
	b.WriteByte('\n')
	fmt.Fprintf(&b, "crc32c %08x\n", crc32.Checksum(b.Bytes(), crc32c))
	return b.Bytes(), nil
}

// errNotSnapshot and friends classify a state file that cannot be loaded.
var (
	errNotSnapshot   = errors.New("not a banger-vmm-qemu snapshot state file")
	errSnapshotCRC   = errors.New("the state file is damaged (CRC mismatch)")
	errOtherVersion  = errors.New("snapshot format version")
	errSnapshotShort = errors.New("the state file is incomplete")
)

// DescribeSnapshot returns the format version of the snapshot state file
// at path (--describe-snapshot), whichever version it is.
func DescribeSnapshot(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	line := make([]byte, len(stateMagic)+10)
	n, _ := io.ReadFull(f, line)
	first, _, _ := bytes.Cut(line[:n], []byte("\n"))
	if !bytes.HasPrefix(first, []byte(stateMagic)) {
		return 0, fmt.Errorf("%s: %w", path, errNotSnapshot)
	}
	v, err := strconv.Atoi(string(first[len(stateMagic):]))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, errNotSnapshot)
	}
	return v, nil
}

// decodeState parses a state file.
func decodeState(raw []byte) (snapshotState, error) {
	var st snapshotState
	first, rest, ok := bytes.Cut(raw, []byte("\n"))
	if !ok || !bytes.HasPrefix(first, []byte(stateMagic)) {
		return st, errNotSnapshot
	}
	ver, err := strconv.Atoi(string(first[len(stateMagic):]))
	if err != nil {
		return st, errNotSnapshot
	}
	if ver != snapshotFormat {
		return st, fmt.Errorf("%w %d: this %s %s reads version %d", errOtherVersion, ver, AppName, Version, snapshotFormat)
	}
	body, crcLine, ok := bytes.Cut(rest, []byte("\n"))
	if !ok {
		return st, errSnapshotShort
	}
	var want uint32
	if _, err := fmt.Sscanf(string(crcLine), "crc32c %08x\n", &want); err != nil {
		return st, errSnapshotShort
	}
	if got := crc32.Checksum(raw[:len(first)+1+len(body)+1], crc32c); got != want {
		return st, errSnapshotCRC
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("%w: %v", errNotSnapshot, err)
	}
	if _, err := hex.DecodeString(st.ID); err != nil || len(st.ID) != 32 || st.VCPUs < 1 || st.MemMiB < 1 ||
		st.RAMSize != int64(st.MemMiB)<<20 || st.StreamLength < 1 || st.MemFileSize != memHeaderLen+st.RAMSize+st.StreamLength {
		return st, fmt.Errorf("%w: bad id, memory layout or machine", errNotSnapshot)
	}
	return st, nil
}

// memHeader returns the memory file's header for st.
func memHeader(st snapshotState) ([]byte, error) {
	raw, err := hex.DecodeString(st.ID)
	if err != nil || len(raw) != 16 {
		return nil, fmt.Errorf("bad snapshot id %q", st.ID)
	}
	h := make([]byte, memHeaderLen)
	copy(h, memMagic)
	copy(h[8:], raw)
	le := binary.LittleEndian
	le.PutUint32(h[24:], snapshotFormat)
	le.PutUint64(h[32:], memHeaderLen)                    // the memory image's offset
	le.PutUint64(h[40:], uint64(st.RAMSize))              // its size
	le.PutUint64(h[48:], uint64(memHeaderLen+st.RAMSize)) // the device state's offset
	return h, nil
}

// checkMemHeader checks that h is the header of st's memory file.
func checkMemHeader(h []byte, st snapshotState) error {
	want, err := memHeader(st)
	if err != nil {
		return err
	}
	switch {
	case len(h) < 8 || !bytes.HasPrefix(h, []byte(memMagic)):
		return errors.New("not a banger-vmm-qemu snapshot memory file")
	case len(h) < memHeaderLen || !bytes.Equal(h[8:24], want[8:24]):
		return errors.New("the memory file belongs to another snapshot")
	case !bytes.Equal(h[:memHeaderLen], want):
		return errors.New("the memory file's layout does not match its state file")
	}
	return nil
}

// pendingFile is a file written under no name and given its name when
// complete: an O_TMPFILE linked in by Commit, or, where the file system
// has no O_TMPFILE, a hidden temporary name renamed by Commit. Abort (or
// a crash) leaves nothing behind (at worst the hidden name, in the
// fallback).
type pendingFile struct {
	f    *os.File
	path string
	tmp  string // the fallback's temporary name
}

func newPendingFile(path string, perm os.FileMode) (*pendingFile, error) {
	dir := filepath.Dir(path)
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(perm))
	if err == nil {
		return &pendingFile{f: os.NewFile(uintptr(fd), path), path: path}, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".partial-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &pendingFile{f: f, path: path, tmp: tmp}, nil
}

// Commit flushes the file to disk and gives it its name, replacing any
// file there.
func (p *pendingFile) Commit() error {
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", p.path, err)
	}
	if p.tmp != "" {
		if err := os.Rename(p.tmp, p.path); err != nil {
			return fmt.Errorf("write %s: %w", p.path, err)
		}
		p.tmp = ""
		return p.f.Close()
	}
	src := "/proc/self/fd/" + strconv.Itoa(int(p.f.Fd()))
	var err error
	for range 3 {
		err = unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, p.path, unix.AT_SYMLINK_FOLLOW)
		if !errors.Is(err, unix.EEXIST) {
			break
		}
		if rerr := os.Remove(p.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("write %s: replace: %w", p.path, rerr)
		}
	}
	if err != nil {
		return fmt.Errorf("write %s: link: %w", p.path, err)
	}
	return p.f.Close()
}

// Abort drops the file.
func (p *pendingFile) Abort() {
	p.f.Close()
	if p.tmp != "" {
		os.Remove(p.tmp)
	}
}

// syncDir flushes a directory's entries (the names Commit linked).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
