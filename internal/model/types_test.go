package model

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{"1", 1 << 20, ""},
		{"512", 512 << 20, ""},
		{"1K", 1 << 10, ""},
		{"4k", 4 << 10, ""},
		{"512M", 512 << 20, ""},
		{"8G", 8 << 30, ""},
		{" 2g ", 2 << 30, ""},
		{"128G", 128 << 30, ""},
		{"", 0, "size is required"},
		{"   ", 0, "size is required"},
		{"0", 0, "size must be positive"},
		{"0G", 0, "size must be positive"},
		{"-1G", 0, "size must be positive"},
		{"129G", 0, "size exceeds max"},
		{"1T", 0, "unsupported size suffix"},
		{"12X", 0, "unsupported size suffix"},
		{"G", 0, "parse size"},
		{"1.5G", 0, "parse size"},
		{"99999999999999999G", 0, "size exceeds max"},
		{"9223372036854775807", 0, "size exceeds max"},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSize(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestFormatSizeBytes(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{8 << 30, "8G"},
		{1536 << 20, "1536M"},
		{512 << 20, "512M"},
		{4 << 10, "4K"},
		{1000, "1000"},
		{0, "0G"},
	}
	for _, tt := range tests {
		if got := FormatSizeBytes(tt.in); got != tt.want {
			t.Errorf("FormatSizeBytes(%d) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestSizeRoundTrip(t *testing.T) {
	for _, n := range []int64{1 << 10, 3 << 10, 1 << 20, 1025 << 10, 7 << 20, 1 << 30, 5 << 30, MaxDiskBytes} {
		s := FormatSizeBytes(n)
		got, err := ParseSize(s)
		if err != nil || got != n {
			t.Errorf("ParseSize(FormatSizeBytes(%d)=%q) = %d, %v", n, s, got, err)
		}
	}
}

func TestValidateVMName(t *testing.T) {
	good := []string{"a", "dev", "dev-1", "0abc", strings.Repeat("a", 63)}
	bad := []string{"", "-dev", "dev-", "Dev", "dev_1", "dev.1", strings.Repeat("a", 64), "dév"}
	for _, n := range good {
		if err := ValidateVMName(n); err != nil {
			t.Errorf("ValidateVMName(%q) = %v; want nil", n, err)
		}
	}
	for _, n := range bad {
		err := ValidateVMName(n)
		if ErrorCode(err) != EINVALID {
			t.Errorf("ValidateVMName(%q) code = %q; want EINVALID", n, ErrorCode(err))
		}
	}
}

func TestValidateLimits(t *testing.T) {
	if ErrorCode(ValidateVCPUCount(0)) != EINVALID || ErrorCode(ValidateVCPUCount(33)) != EINVALID {
		t.Error("vcpu limits not enforced")
	}
	if ValidateVCPUCount(1) != nil || ValidateVCPUCount(32) != nil {
		t.Error("vcpu limits too strict")
	}
	if ErrorCode(ValidateMemoryMiB(127)) != EINVALID || ValidateMemoryMiB(128) != nil {
		t.Error("memory limit wrong")
	}
}

func TestErrorCode(t *testing.T) {
	base := Errorf(ENOTFOUND, "vm %q not found", "x")
	wrapped := errors.Join(errors.New("ctx"), base)
	if got := ErrorCode(wrapped); got != ENOTFOUND {
		t.Errorf("ErrorCode(wrapped) = %q", got)
	}
	if got := ErrorCode(errors.New("plain")); got != EINTERNAL {
		t.Errorf("ErrorCode(plain) = %q", got)
	}
	if got := ErrorCode(nil); got != "" {
		t.Errorf("ErrorCode(nil) = %q", got)
	}
}

func TestShortID(t *testing.T) {
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 64 || len(ShortID(id)) != 12 || ShortID("abc") != "abc" {
		t.Errorf("ids: %q %q", id, ShortID(id))
	}
}
