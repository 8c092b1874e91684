package qemuvmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Accelerators QEMU can run the guest with.
const (
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
	AccelAuto = "auto"
)

// probeLoadAddr is where the probe guest is loaded (1 MiB, above the
// firmware), and probeCodeAddr where its code starts.
const (
	probeLoadAddr = 0x100000
	probeCodeOff  = 0x100
	probeCodeAddr = probeLoadAddr + probeCodeOff
	// probeExitPort is the isa-debug-exit port; writing v there makes
	// QEMU exit with status v<<1|1.
	probeExitPort = 0xf4
	probeExitCode = 0x21<<1 | 1
	// probeMarker is the byte the guest writes to the serial port.
	probeMarker = 'K'
)

// probeCode is the probe guest, entered by PVH in 32-bit protected mode
// without paging at probeCodeAddr. It builds identity page tables at
// 0x200000 (PML4), 0x201000 (PDPT) and 0x202000 (PD, two 2 MiB pages),
// enters long mode, and then does what Linux does early and what a host
// that cannot really run guests fails at: a locked CMPXCHG16B on a live
// page-table page. On a PVM host (kvm_pvm, shadow paging) that write
// traps into KVM's instruction emulator, which cannot emulate it ("KVM
// internal error ... emulation failure") and QEMU stops the guest — the
// same failure that stops an ordinary kernel there. Under TCG or KVM
// with hardware paging it just runs. Then it writes probeMarker to the
// serial port (0x3f8) and exits QEMU through isa-debug-exit.
//
// The bytes were assembled with GNU as (--32, .code64 after the jump)
// and linked at probeCodeAddr; lgdt and ljmp hold absolute addresses in
// that layout.
var probeCode = []byte{
	0xfa,                                                       // cli
	0xc7, 0x05, 0x00, 0x00, 0x20, 0x00, 0x03, 0x10, 0x20, 0x00, // movl $0x201003, 0x200000   PML4[0] = PDPT|P|W
	0xc7, 0x05, 0x00, 0x10, 0x20, 0x00, 0x03, 0x20, 0x20, 0x00, // movl $0x202003, 0x201000   PDPT[0] = PD|P|W
	0xc7, 0x05, 0x00, 0x20, 0x20, 0x00, 0x83, 0x00, 0x00, 0x00, // movl $0x83, 0x202000       PD[0] = 0 MiB, 2 MiB page
	0xc7, 0x05, 0x08, 0x20, 0x20, 0x00, 0x83, 0x00, 0x20, 0x00, // movl $0x200083, 0x202008   PD[1] = 2 MiB, 2 MiB page
	0x0f, 0x20, 0xe0, // movl %cr4, %eax
	0x83, 0xc8, 0x20, // orl $0x20, %eax              PAE
	0x0f, 0x22, 0xe0, // movl %eax, %cr4
	0xb8, 0x00, 0x00, 0x20, 0x00, // movl $0x200000, %eax
	0x0f, 0x22, 0xd8, // movl %eax, %cr3
	0xb9, 0x80, 0x00, 0x00, 0xc0, // movl $0xc0000080, %ecx   EFER
	0x0f, 0x32, // rdmsr
	0x0d, 0x00, 0x01, 0x00, 0x00, // orl $0x100, %eax             LME
	0x0f, 0x30, // wrmsr
	0x0f, 0x20, 0xc0, // movl %cr0, %eax
	0x0d, 0x01, 0x00, 0x00, 0x80, // orl $0x80000001, %eax        PG|PE
	0x0f, 0x22, 0xc0, // movl %eax, %cr0
	0x0f, 0x01, 0x15, 0x98, 0x01, 0x10, 0x00, // lgdtl 0x100198
	0xea, 0x61, 0x01, 0x10, 0x00, 0x08, 0x00, // ljmpl $0x8, $0x100161   into 64-bit code
	// 0x100161, 64-bit:
	0x48, 0xc7, 0xc7, 0x00, 0x00, 0x20, 0x00, // movq $0x200000, %rdi   the PML4 page
	0x31, 0xc0, // xorl %eax, %eax
	0x31, 0xd2, // xorl %edx, %edx
	0x31, 0xdb, // xorl %ebx, %ebx
	0x31, 0xc9, // xorl %ecx, %ecx
	0xf0, 0x48, 0x0f, 0xc7, 0x4f, 0x10, // lock cmpxchg16b 0x10(%rdi)   PML4[2..3]: 0 == 0, stores 0
	0x66, 0xba, 0xf8, 0x03, // movw $0x3f8, %dx
	0xb0, probeMarker, // movb $'K', %al
	0xee,                            // outb %al, (%dx)
	0x66, 0xba, probeExitPort, 0x00, // movw $0xf4, %dx
	0xb0, 0x21, // movb $0x21, %al
	0xee,       // outb %al, (%dx)   QEMU exits with 0x21<<1|1
	0xf4,       // hlt
	0xeb, 0xfd, // jmp .-1
	0x90, // nop (align)
	// 0x100188: GDT, a null descriptor and a 64-bit code segment (0x08).
	0, 0, 0, 0, 0, 0, 0, 0,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x9a, 0x20, 0x00,
	// 0x100198: GDT pointer: limit 15, base 0x100188.
	0x0f, 0x00, 0x88, 0x01, 0x10, 0x00,
}

// ProbeELF returns the probe guest as an ELF32 file with one PT_LOAD
// segment (the whole file at probeLoadAddr) and a PT_NOTE holding the Xen
// PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18), which makes QEMU boot
// it through PVH like a Firecracker vmlinux.
func ProbeELF() []byte {
	const (
		ehSize   = 52
		phSize   = 32
		noteOff  = ehSize + 2*phSize
		noteSize = 12 + 4 + 4 // header, "Xen\0", entry
	)
	le := binary.LittleEndian
	file := make([]byte, probeCodeOff+len(probeCode))
	// ELF header.
	copy(file, []byte{0x7f, 'E', 'L', 'F', 1 /* 32-bit */, 1 /* LE */, 1 /* version */})
	le.PutUint16(file[16:], 2)             // e_type: EXEC
	le.PutUint16(file[18:], 3)             // e_machine: EM_386
	le.PutUint32(file[20:], 1)             // e_version
	le.PutUint32(file[24:], probeCodeAddr) // e_entry
	le.PutUint32(file[28:], ehSize)        // e_phoff
	le.PutUint16(file[40:], ehSize)        // e_ehsize
	le.PutUint16(file[42:], phSize)        // e_phentsize
	le.PutUint16(file[44:], 2)             // e_phnum
	le.PutUint16(file[46:], 40)            // e_shentsize
	// PT_LOAD: the whole file, RWX.
	ph := file[ehSize:]
	le.PutUint32(ph[0:], 1)
	le.PutUint32(ph[4:], 0)
	le.PutUint32(ph[8:], probeLoadAddr)
	le.PutUint32(ph[12:], probeLoadAddr)
	le.PutUint32(ph[16:], uint32(len(file)))
	le.PutUint32(ph[20:], uint32(len(file)))
	le.PutUint32(ph[24:], 7)
	le.PutUint32(ph[28:], 0x1000)
	// PT_NOTE.
	ph = file[ehSize+phSize:]
	le.PutUint32(ph[0:], 4)
	le.PutUint32(ph[4:], noteOff)
	le.PutUint32(ph[8:], probeLoadAddr+noteOff)
	le.PutUint32(ph[12:], probeLoadAddr+noteOff)
	le.PutUint32(ph[16:], noteSize)
	le.PutUint32(ph[20:], noteSize)
	le.PutUint32(ph[24:], 4)
	le.PutUint32(ph[28:], 4)
	// The note: namesz 4, descsz 4, type 18, "Xen\0", entry address.
	n := file[noteOff:]
	le.PutUint32(n[0:], 4)
	le.PutUint32(n[4:], 4)
	le.PutUint32(n[8:], 18)
	copy(n[12:], "Xen\x00")
	le.PutUint32(n[16:], probeCodeAddr)
	copy(file[probeCodeOff:], probeCode)
	return file
}

// ProbeArgs returns QEMU's argv (after the binary) for running the probe
// guest at elfPath with accel: the same microvm machine banger's VMs use,
// plus isa-debug-exit.
func ProbeArgs(accel, elfPath string) []string {
	args := []string{
		"-sandbox", sandboxOpts,
		"-M", "microvm,acpi=on,pit=on,pic=on,rtc=on",
		"-accel", accel,
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-m", "16M",
		"-kernel", elfPath,
		"-serial", "stdio",
		"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=1", probeExitPort),
	}
	if accel == AccelKVM {
		args = append(args, "-cpu", "host")
	}
	return args
}

// probeKVMPVM is where a PVM host shows itself; it is only reported, the
// probe decides.
const probeKVMPVM = "/sys/module/kvm_pvm"

// Probe runs the probe guest under accel and returns nil when it ran to
// the end: the marker on the serial port and the expected exit status.
// It never hangs: a guest that stops is killed after timeout, and a
// "KVM internal error" on QEMU's stderr ends the probe at once. The probe
// guest lives in a memfd handed to QEMU as descriptor 3, so a probe
// killed at any point leaves no file behind.
func Probe(ctx context.Context, qemu, accel string, timeout time.Duration) error {
	elf, err := memfdWith("banger-vmm-probe", ProbeELF())
	if err != nil {
		return fmt.Errorf("probe %s: %w", accel, err)
	}
	defer elf.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, ProbeArgs(accel, "/dev/fd/3")...)
	cmd.ExtraFiles = []*os.File{elf}
	var stdout bytes.Buffer
	stderr := &watchWriter{needle: []byte("KVM internal error"), hit: cancel}
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	// Pdeathsig follows the thread that forks, so keep this goroutine
	// on one thread until QEMU is reaped.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == probeExitCode && bytes.Contains(stdout.Bytes(), []byte{probeMarker}):
		return nil
	case stderr.found():
		return fmt.Errorf("probe %s: guest failed: KVM internal error (emulation failure)", accel)
	case ctx.Err() != nil:
		return fmt.Errorf("probe %s: guest did not finish within %v", accel, timeout)
	case err == nil:
		return fmt.Errorf("probe %s: guest reset before finishing (serial %q)", accel, stdout.String())
	default:
		return fmt.Errorf("probe %s: %w: %s", accel, err, strings.TrimSpace(stderr.String()))
	}
}

// watchWriter collects a stream and calls hit once when needle appears.
type watchWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	needle []byte
	hit    func()
	seen   bool
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() < 64<<10 {
		w.buf.Write(p)
	}
	if !w.seen && bytes.Contains(w.buf.Bytes(), w.needle) {
		w.seen = true
		w.hit()
	}
	return len(p), nil
}

func (w *watchWriter) found() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// AccelChoice is the outcome of choosing an accelerator.
type AccelChoice struct {
	Accel string
	// Why explains the choice for the log.
	Why string
	// TSCkHz is the host's TSC frequency, measured when Accel is TCG (0
	// otherwise or when unknown); see MeasureTSCkHz.
	TSCkHz uint64
}

// ChooseAccel resolves want (auto, kvm or tcg). auto picks KVM when
// /dev/kvm opens and the probe guest runs under it, else TCG; kvm and tcg
// are taken as given. With a cache, auto's answer is read from it when
// it holds one for this host boot and QEMU binary, and stored in it (best
// effort) after a probe.
func ChooseAccel(ctx context.Context, qemu, want string, timeout time.Duration, cache *AccelCache) (AccelChoice, error) {
	auto := want == AccelAuto || want == ""
	if auto && cache != nil {
		if c, ok := cache.Load(qemu); ok {
			return c, nil
		}
	}
	c, err := chooseAccel(ctx, qemu, want, timeout)
	if err == nil && c.Accel == AccelTCG {
		c.TSCkHz = MeasureTSCkHz(20 * time.Millisecond)
	}
	if err == nil && auto && cache != nil {
		if serr := cache.Store(qemu, c); serr != nil && cache.Log != nil {
			cache.Log.Info("accelerator choice not cached", "err", serr)
		}
	}
	return c, err
}

func chooseAccel(ctx context.Context, qemu, want string, timeout time.Duration) (AccelChoice, error) {
	switch want {
	case AccelKVM, AccelTCG:
		return AccelChoice{Accel: want, Why: "requested with --accel"}, nil
	case AccelAuto, "":
	default:
		return AccelChoice{}, fmt.Errorf("choose accelerator: %q: want auto, kvm or tcg", want)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelChoice{Accel: AccelTCG, Why: fmt.Sprintf("kvm unusable: %v", err)}, nil
	}
	f.Close()
	if err := Probe(ctx, qemu, AccelKVM, timeout); err != nil {
		why := err.Error()
		if _, serr := os.Stat(probeKVMPVM); serr == nil {
			why += " (the host's KVM is PVM)"
		}
		return AccelChoice{Accel: AccelTCG, Why: why}, nil
	}
	return AccelChoice{Accel: AccelKVM, Why: "the kvm probe guest ran"}, nil
}

// AccelProbe chooses the accelerator once, in the background, so that the
// API can answer while the probe runs; InstanceStart waits for it.
type AccelProbe struct {
	done   chan struct{}
	choice AccelChoice
	err    error
}

// StartAccelProbe starts ChooseAccel in a goroutine that ends when the
// choice is made (the probe is bounded by timeout).
func StartAccelProbe(qemu, want string, timeout time.Duration, cache *AccelCache) *AccelProbe {
	p := &AccelProbe{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.choice, p.err = ChooseAccel(context.Background(), qemu, want, timeout, cache)
	}()
	return p
}

// FixedAccel returns an AccelProbe already resolved to accel.
func FixedAccel(accel string) *AccelProbe {
	p := &AccelProbe{done: make(chan struct{}), choice: AccelChoice{Accel: accel, Why: "fixed"}}
	close(p.done)
	return p
}

// Result waits for the choice or ctx.
func (p *AccelProbe) Result(ctx context.Context) (AccelChoice, error) {
	select {
	case <-p.done:
		return p.choice, p.err
	case <-ctx.Done():
		return AccelChoice{}, fmt.Errorf("wait for accelerator probe: %w", ctx.Err())
	}
}
