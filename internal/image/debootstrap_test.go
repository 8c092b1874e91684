package image

import (
	"reflect"
	"strings"
	"testing"

	"banger/internal/model"
)

func TestDebootstrapArgv(t *testing.T) {
	got := debootstrapArgv("bookworm", "http://archive.example/debian", "/img/rootfs", "")
	want := []string{
		"debootstrap", "--variant=minbase", "--arch=amd64", "--components=main",
		"--include=systemd,systemd-sysv,openssh-server,git,ca-certificates,iproute2,iputils-ping,procps,netbase,curl,less",
		"bookworm", "/img/rootfs", "http://archive.example/debian",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("debootstrapArgv =\n%q\nwant\n%q", got, want)
	}
	// A mirror a user named is checked against Debian's keyring.
	got = debootstrapArgv("bookworm", "http://archive.example/debian", "/img/rootfs", "/usr/share/keyrings/debian-archive-keyring.gpg")
	want = append(append(append([]string{}, want[:5]...), "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg"), want[5:]...)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("debootstrapArgv with a keyring =\n%q\nwant\n%q", got, want)
	}
}

func TestPackagesArgv(t *testing.T) {
	got := packagesArgv("/img/rootfs", []string{"docker.io", "jq"})
	if !reflect.DeepEqual(got[:4], []string{"chroot", "/img/rootfs", "/bin/sh", "-c"}) {
		t.Errorf("argv starts %q", got[:4])
	}
	// The names are positional parameters, never spliced into the script.
	if !reflect.DeepEqual(got[5:], []string{"banger-packages", "docker.io", "jq"}) {
		t.Errorf("argv ends %q", got[5:])
	}
	script := got[4]
	for _, want := range []string{"mount -t proc proc /proc", "apt-get update", `apt-get install -y --no-install-recommends`, `"$@"`, "apt-get clean"} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	if strings.Contains(script, "jq") {
		t.Errorf("package name inside the script:\n%s", script)
	}
}

func TestExtraPackages(t *testing.T) {
	tests := []struct {
		name   string
		pkgs   []string
		docker bool
		want   []string
	}{
		{"none", nil, false, []string{}},
		{"docker", nil, true, []string{"docker.io"}},
		{"sorted, deduplicated, base removed", []string{"jq", " vim ", "git", "jq", ""}, true, []string{"docker.io", "jq", "vim"}},
	}
	for _, tt := range tests {
		if got := extraPackages(tt.pkgs, tt.docker); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: extraPackages = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestBaseCacheKey(t *testing.T) {
	base := baseCacheKey("bookworm", "http://archive.example/debian", []string{"jq"})
	if again := baseCacheKey("bookworm", "http://archive.example/debian/", []string{"jq"}); again != base {
		t.Errorf("a trailing slash on the mirror changes the key")
	}
	for name, k := range map[string]string{
		"release":  baseCacheKey("trixie", "http://archive.example/debian", []string{"jq"}),
		"mirror":   baseCacheKey("bookworm", "http://other.example/debian", []string{"jq"}),
		"packages": baseCacheKey("bookworm", "http://archive.example/debian", []string{"jq", "vim"}),
		"none":     baseCacheKey("bookworm", "http://archive.example/debian", nil),
	} {
		if k == base {
			t.Errorf("changing the %s keeps the key", name)
		}
	}
	if got := baseCacheName("bookworm", base); got != "rootfs-bookworm-"+base[:16]+".tar" {
		t.Errorf("baseCacheName = %q", got)
	}
}

func TestFSArgv(t *testing.T) {
	if got, want := mkfsArgv("banger-root", "/t/rootfs", "/t/rootfs.ext4"), []string{"mkfs.ext4", "-q", "-F", "-T", "default", "-L", "banger-root", "-d", "/t/rootfs", "/t/rootfs.ext4"}; !reflect.DeepEqual(got, want) {
		t.Errorf("mkfsArgv = %q, want %q", got, want)
	}
	if got, want := fsckArgv("/t/x.ext4"), []string{"e2fsck", "-f", "-n", "/t/x.ext4"}; !reflect.DeepEqual(got, want) {
		t.Errorf("fsckArgv = %q, want %q", got, want)
	}
	if got := tarCreateArgv("/t/rootfs", "/c/x.tar"); !reflect.DeepEqual(got[len(got)-3:], []string{"-C", "/t/rootfs", "."}) || !contains(got, "--xattrs") || !contains(got, "--numeric-owner") {
		t.Errorf("tarCreateArgv = %q", got)
	}
	if got := tarExtractArgv("/c/x.tar", "/t/rootfs"); !contains(got, "--preserve-permissions") || !contains(got, "--xattrs-include=*") {
		t.Errorf("tarExtractArgv = %q", got)
	}
}

func TestFitSize(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		used int64
		want int64
	}{
		{0, 1024 * mib},
		{1, 1088 * mib},
		{320 * mib, 1408 * mib},
		{1000 * mib, 2240 * mib},
	}
	for _, tt := range tests {
		got := fitSize(tt.used)
		if got != tt.want {
			t.Errorf("fitSize(%d MiB) = %d MiB, want %d MiB", tt.used/mib, got/mib, tt.want/mib)
		}
		if got%(64*mib) != 0 || got < tt.used+tt.used/5 {
			t.Errorf("fitSize(%d) = %d: not aligned or too small", tt.used, got)
		}
	}
}

func TestValidateImageOptions(t *testing.T) {
	ok := ImageOptions{Name: "dev", OutDir: "/var/lib/banger/images/dev", KernelPath: "/k/vmlinux", SSHPublicKey: testKey}
	tests := []struct {
		name    string
		edit    func(*ImageOptions)
		wantErr string
	}{
		{"ok", func(*ImageOptions) {}, ""},
		{"no name", func(o *ImageOptions) { o.Name = " " }, model.EINVALID},
		{"relative out dir", func(o *ImageOptions) { o.OutDir = "images/dev" }, model.EINVALID},
		{"no kernel", func(o *ImageOptions) { o.KernelPath = "" }, model.EINVALID},
		{"bad key", func(o *ImageOptions) { o.SSHPublicKey = "ssh-ed25519 nope" }, model.EINVALID},
		{"bad dns", func(o *ImageOptions) { o.DNS = "dns.example" }, model.EINVALID},
		{"negative size", func(o *ImageOptions) { o.SizeBytes = -1 }, model.EINVALID},
		{"option as package", func(o *ImageOptions) { o.Packages = []string{"--allow-unauthenticated"} }, model.EINVALID},
		{"shell in package", func(o *ImageOptions) { o.Packages = []string{"jq;reboot"} }, model.EINVALID},
		{"versioned package", func(o *ImageOptions) {
			o.Packages = []string{"jq=1.6-2.1", "vim/bookworm-backports", "libc6:i386", "g++"}
		}, ""},
		{"bad release", func(o *ImageOptions) { o.Release = "../etc" }, model.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.edit(&o)
			got, err := validateImageOptions(o)
			if code := model.ErrorCode(err); code != tt.wantErr {
				t.Fatalf("error code = %q (%v), want %q", code, err, tt.wantErr)
			}
			if err == nil && got.DNS == "" {
				t.Errorf("DNS default not filled")
			}
		})
	}
}
