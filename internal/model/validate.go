package model

import (
	"fmt"
	"regexp"
)

// Limits on what a VM may ask for.
const (
	MinVCPUCount = 1
	MaxVCPUCount = 32
	MinMemoryMiB = 128
	// MaxMemoryMiB is a sanity bound, not a host check.
	MaxMemoryMiB = 1024 * 1024
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateVMName checks that name is a DNS label: lowercase letters,
// digits and '-', 1 to 63 characters, not starting or ending with '-'.
func ValidateVMName(name string) error {
	if name == "" {
		return Errorf(EINVALID, "name: required; use 1-63 lowercase letters, digits or '-'")
	}
	if !dnsLabel.MatchString(name) {
		return Errorf(EINVALID, "name %q: must be a DNS label: 1-63 lowercase letters, digits or '-', not starting or ending with '-'", name)
	}
	return nil
}

// ValidateImageName checks an image name. Image names follow the same
// rules as VM names so they are safe in paths and on the command line.
func ValidateImageName(name string) error {
	if name == "" {
		return Errorf(EINVALID, "image name: required; use 1-63 lowercase letters, digits or '-'")
	}
	if !dnsLabel.MatchString(name) {
		return Errorf(EINVALID, "image name %q: must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'", name)
	}
	return nil
}

// ValidateVCPUCount checks a vCPU count.
func ValidateVCPUCount(n int) error {
	if n < MinVCPUCount || n > MaxVCPUCount {
		return Errorf(EINVALID, "vcpus %d: must be between %d and %d", n, MinVCPUCount, MaxVCPUCount)
	}
	return nil
}

// ValidateMemoryMiB checks a memory size in MiB.
func ValidateMemoryMiB(n int) error {
	if n < MinMemoryMiB || n > MaxMemoryMiB {
		return Errorf(EINVALID, "memory %d MiB: must be at least %d MiB (and at most %d MiB)", n, MinMemoryMiB, MaxMemoryMiB)
	}
	return nil
}

// ValidateDiskSize checks a disk size in bytes against the same limits as
// ParseSize; field names the flag or key for the message.
func ValidateDiskSize(field string, n int64) error {
	if n <= 0 || n > MaxDiskBytes {
		return Errorf(EINVALID, "%s %d: must be positive and at most %s", field, n, FormatSizeBytes(MaxDiskBytes))
	}
	if n%(1024*1024) != 0 {
		return Errorf(EINVALID, "%s %s: must be a whole number of MiB", field, FormatSizeBytes(n))
	}
	return nil
}

// ValidateSpec checks a complete VM spec.
func ValidateSpec(s VMSpec) error {
	if err := ValidateVCPUCount(s.VCPUCount); err != nil {
		return err
	}
	if err := ValidateMemoryMiB(s.MemoryMiB); err != nil {
		return err
	}
	if err := ValidateDiskSize("overlay size", s.SystemOverlaySizeByte); err != nil {
		return err
	}
	if err := ValidateDiskSize("disk size", s.WorkDiskSizeBytes); err != nil {
		return err
	}
	if s.AutoStopAfterSeconds != nil && *s.AutoStopAfterSeconds < 0 {
		return Errorf(EINVALID, "auto-stop: must not be negative")
	}
	return nil
}

// DNSName returns the DNS name of a VM under domain.
func DNSName(vmName, domain string) string {
	if domain == "" {
		return vmName
	}
	return fmt.Sprintf("%s.%s", vmName, domain)
}
