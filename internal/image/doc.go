// Package image builds what a banger VM boots: the guest kernel and Debian
// images.
//
// BuildKernel compiles the kernel Firecracker boots (an uncompressed ELF
// vmlinux with the Xen PVH note, virtio-mmio, ext4, in-kernel ip=, an
// i8042 keyboard for Ctrl-Alt-Del) from the host's linux-source package
// with Firecracker's CI guest configuration, embedded from kernelconfig/.
// Kernels are named by source version and configuration hash, kept with a
// JSON sidecar and their build log, and reused when their inputs match.
//
// BuildImage makes an image directory: rootfs.ext4 (debootstrap minbase
// plus systemd and OpenSSH, made without mounting anything), the kernel,
// and work-seed.ext4 (root's home, mounted on /root by label at boot). The
// guest takes its address and hostname from the kernel command line,
// writes resolv.conf from it, makes its SSH host keys at first boot,
// trusts the daemon's key, and ends the VM on Ctrl-Alt-Del, reboot and
// power-off alike. Base systems are cached by their inputs.
//
// Long steps run through a runner that logs to the build's log file and
// kills the step's whole process group (and, for steps inside the image's
// chroot, its PID and mount namespaces) when the context is cancelled.
package image
