// Package guestinit is banger's small init for guest images without an
// init system of their own (most container images): as PID 1 it mounts
// what a Linux system needs, takes the hostname and DNS servers from the
// kernel command line (the kernel configures ip= itself), mounts the
// work disk on /root, runs sshd, reaps orphans, and ends the VM on
// Ctrl-Alt-Del, poweroff, reboot or halt. The same binary applies an
// image's user, environment and working directory to ssh sessions
// ("banger-init session"). It is built statically and imports neither
// net nor os/user, so it runs in any image whatever its libc.
package guestinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Paths in the guest. The image build writes these files.
const (
	// BinPath is where the image build puts this binary.
	BinPath = "/usr/lib/banger/banger-init"
	// ConfigPath holds what the init and sessions need from the build.
	ConfigPath = "/etc/banger/guest.json"
	// SSHDConfigPath is the sshd configuration the init runs sshd with.
	SSHDConfigPath = "/etc/banger/sshd_config"
	// WorkLabel is the work disk's filesystem label.
	WorkLabel = "banger-work"
)

// Config is /etc/banger/guest.json.
type Config struct {
	// DNS is the nameserver used when the kernel command line names none.
	DNS string `json:"dns,omitempty"`
	// Env, WorkingDir and User come from the container image's config
	// and apply to ssh sessions.
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Marshal renders c as the file's content.
func (c Config) Marshal() []byte {
	b, _ := json.MarshalIndent(c, "", "  ")
	return append(b, '\n')
}

// readConfig reads the config; a missing file is the zero config.
func readConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// CmdlineParam returns the value of key= on a kernel command line (the
// last one wins, as in the kernel).
func CmdlineParam(cmdline, key string) (string, bool) {
	val, found := "", false
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, key+"="); ok {
			val, found = v, true
		}
	}
	return val, found
}

// Hostname is the guest's name from the kernel command line:
// systemd.hostname= (which banger passes), else the fifth field of ip=.
func Hostname(cmdline string) string {
	if h, ok := CmdlineParam(cmdline, "systemd.hostname"); ok && h != "" {
		return h
	}
	if ip, ok := CmdlineParam(cmdline, "ip"); ok {
		f := strings.Split(ip, ":")
		if len(f) > 4 {
			return f[4]
		}
	}
	return ""
}

// ResolvConf renders /etc/resolv.conf from /proc/net/pnp (where the
// kernel shows the DNS servers of ip=), falling back to dns.
func ResolvConf(pnp, dns string) string {
	var b strings.Builder
	b.WriteString("# banger-init: from the kernel's ip= (/proc/net/pnp)\n")
	n := 0
	for _, line := range strings.Split(pnp, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && (f[0] == "nameserver" || f[0] == "domain" || f[0] == "search") {
			if f[0] == "nameserver" {
				if f[1] == "0.0.0.0" {
					continue
				}
				n++
			}
			b.WriteString(f[0] + " " + f[1] + "\n")
		}
	}
	if n == 0 && dns != "" {
		b.WriteString("nameserver " + dns + "\n")
	}
	return b.String()
}

// HostsWithName returns hosts with "127.0.1.1 name" added unless name is
// already there, so tools that look the hostname up never wait on DNS.
func HostsWithName(hosts, name string) string {
	if name == "" {
		return hosts
	}
	for _, line := range strings.Split(hosts, "\n") {
		f := strings.Fields(line)
		for _, n := range f[min(1, len(f)):] {
			if n == name {
				return hosts
			}
		}
	}
	if hosts != "" && !strings.HasSuffix(hosts, "\n") {
		hosts += "\n"
	}
	return hosts + "127.0.1.1\t" + name + "\n"
}
