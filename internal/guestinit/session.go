package guestinit

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Identity is who a session runs as.
type Identity struct {
	Name   string
	UID    int
	GID    int
	Groups []int
	Home   string
	Shell  string
}

// passwdEntry is a line of /etc/passwd.
type passwdEntry struct {
	name       string
	uid, gid   int
	home, shel string
}

func parsePasswd(content string) []passwdEntry {
	var out []passwdEntry
	for _, line := range strings.Split(content, "\n") {
		f := strings.Split(line, ":")
		if len(f) < 7 || strings.HasPrefix(line, "#") {
			continue
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5], shel: f[6]})
	}
	return out
}

// groupEntry is a line of /etc/group.
type groupEntry struct {
	name    string
	gid     int
	members []string
}

func parseGroup(content string) []groupEntry {
	var out []groupEntry
	for _, line := range strings.Split(content, "\n") {
		f := strings.Split(line, ":")
		if len(f) < 4 || strings.HasPrefix(line, "#") {
			continue
		}
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		var members []string
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				members = append(members, m)
			}
		}
		out = append(out, groupEntry{name: f[0], gid: gid, members: members})
	}
	return out
}

// ResolveUser turns an image's User ("name", "uid", "name:group",
// "uid:gid"; empty is root) into an identity the way container engines
// do: a name must be in passwd, a number need not be (then its group is
// 0 and its home /); the groups listing the user by name are added.
func ResolveUser(spec, passwd, group string) (Identity, error) {
	users, groups := parsePasswd(passwd), parseGroup(group)
	if spec == "" {
		spec = "0"
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	id := Identity{Home: "/", Shell: "/bin/sh"}
	if n, err := strconv.Atoi(userPart); err == nil {
		if n < 0 {
			return id, fmt.Errorf("user %q: negative uid", spec)
		}
		id.UID = n
		for _, u := range users {
			if u.uid == n {
				id.Name, id.GID, id.Home, id.Shell = u.name, u.gid, u.home, u.shel
				break
			}
		}
	} else {
		found := false
		for _, u := range users {
			if u.name == userPart {
				id.Name, id.UID, id.GID, id.Home, id.Shell = u.name, u.uid, u.gid, u.home, u.shel
				found = true
				break
			}
		}
		if !found {
			return id, fmt.Errorf("user %q is not in the image's /etc/passwd", userPart)
		}
	}
	if hasGroup {
		if n, err := strconv.Atoi(groupPart); err == nil && n >= 0 {
			id.GID = n
		} else {
			found := false
			for _, g := range groups {
				if g.name == groupPart {
					id.GID, found = g.gid, true
					break
				}
			}
			if !found {
				return id, fmt.Errorf("group %q is not in the image's /etc/group", groupPart)
			}
		}
	}
	id.Groups = []int{id.GID}
	if id.Name != "" {
		for _, g := range groups {
			for _, m := range g.members {
				if m == id.Name && g.gid != id.GID {
					id.Groups = append(id.Groups, g.gid)
				}
			}
		}
	}
	if id.Home == "" {
		id.Home = "/"
	}
	switch filepath.Base(id.Shell) {
	case "", "nologin", "false", "sync", "halt", "shutdown":
		id.Shell = "/bin/sh"
	}
	if id.Name == "" {
		id.Name = strconv.Itoa(id.UID)
	}
	return id, nil
}

// SessionEnv is a session's environment: the one ssh gave (TERM,
// SSH_*, ...), with the identity's HOME, USER, LOGNAME and SHELL, then
// the image's Env on top (a PATH there replaces ssh's).
func SessionEnv(base []string, id Identity, imageEnv []string) []string {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, kv := range base {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set(k, v)
		}
	}
	set("HOME", id.Home)
	set("USER", id.Name)
	set("LOGNAME", id.Name)
	set("SHELL", id.Shell)
	for _, kv := range imageEnv {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			set(k, v)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// Session runs an ssh session as the image asks: as its user, in its
// working directory, with its environment. With -c LINE the user's
// shell runs LINE (as ssh runs a command); without, a login shell. It
// returns only on failure.
func Session(args []string) int {
	line, hasLine := "", false
	switch {
	case len(args) == 0:
	case len(args) == 2 && args[0] == "-c":
		line, hasLine = args[1], true
	default:
		fmt.Fprintln(os.Stderr, "usage: banger-init session [-c COMMAND]")
		return 2
	}
	cfg, err := readConfig(ConfigPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger: %v\n", err)
		return 1
	}
	passwd, _ := os.ReadFile("/etc/passwd")
	group, _ := os.ReadFile("/etc/group")
	id, err := ResolveUser(cfg.User, string(passwd), string(group))
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger: the image's user: %v\n", err)
		return 1
	}
	env := SessionEnv(os.Environ(), id, cfg.Env)
	if os.Getuid() == 0 && (id.UID != 0 || id.GID != 0) {
		if err := syscall.Setgroups(id.Groups); err != nil {
			fmt.Fprintf(os.Stderr, "banger: setgroups: %v\n", err)
			return 1
		}
		if err := syscall.Setgid(id.GID); err != nil {
			fmt.Fprintf(os.Stderr, "banger: setgid %d: %v\n", id.GID, err)
			return 1
		}
		if err := syscall.Setuid(id.UID); err != nil {
			fmt.Fprintf(os.Stderr, "banger: setuid %d: %v\n", id.UID, err)
			return 1
		}
	}
	dir := cfg.WorkingDir
	if dir == "" {
		dir = id.Home
	}
	if err := os.Chdir(dir); err != nil {
		fmt.Fprintf(os.Stderr, "banger: working directory %s: %v; starting in /\n", dir, err)
		_ = os.Chdir("/")
	}
	shell := id.Shell
	if _, err := os.Stat(shell); err != nil {
		shell = "/bin/sh"
	}
	argv := []string{"-" + filepath.Base(shell)}
	if hasLine {
		argv = []string{filepath.Base(shell), "-c", line}
	}
	err = syscall.Exec(shell, argv, env)
	fmt.Fprintf(os.Stderr, "banger: run %s: %v\n", shell, err)
	return 127
}
