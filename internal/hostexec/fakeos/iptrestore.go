package fakeos

import (
	"slices"
	"strconv"
	"strings"
)

// This file fakes iptables-restore(8) for what banger feeds it: `-w
// --noflush` with "*table" blocks of -A, -I and -D lines, each ended by
// COMMIT. All of the input applies or none does, as the nf_tables
// backend makes it one transaction. Without --noflush the real command
// flushes every table it names; banger never asks for that, so the fake
// refuses it.

func init() {
	register("iptables-restore", iptablesRestoreCommand)
}

func iptablesRestoreCommand(o *OS, args []string, stdin string) (string, error) {
	noflush := false
	for _, a := range args {
		switch a {
		case "-w", "--wait":
		case "-n", "--noflush":
			noflush = true
		default:
			return netUnexpected("iptables-restore", args)
		}
	}
	if !noflush {
		return netUnexpected("iptables-restore", args)
	}
	saved := map[string][]string{}
	for k, v := range o.Rules {
		saved[k] = slices.Clone(v)
	}
	fail := func(out string, err error) (string, error) {
		o.Rules = saved
		return out, err
	}
	table := ""
	for n, line := range strings.Split(stdin, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			if table != "" {
				return fail(netFail("iptables-restore: line %d failed", n+1))
			}
			table = line[1:]
		case line == "COMMIT":
			if table == "" {
				return fail(netFail("iptables-restore: line %d failed", n+1))
			}
			table = ""
		default:
			words := strings.Fields(line)
			if table == "" || len(words) < 2 || !slices.Contains([]string{"-A", "-I", "-D"}, words[0]) {
				return fail(netUnexpected("iptables-restore", []string{"(line: " + line + ")"}))
			}
			if _, err := iptablesCommand(o, append([]string{"-t", table}, words...), ""); err != nil {
				return fail(netFail("iptables-restore: line %s failed", strconv.Itoa(n+1)))
			}
		}
	}
	if table != "" {
		return fail(netFail("iptables-restore: COMMIT expected at line %d", len(strings.Split(stdin, "\n"))))
	}
	return "", nil
}
