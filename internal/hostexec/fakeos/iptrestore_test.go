package fakeos

import (
	"context"
	"strings"
	"testing"
)

func TestIptablesRestore(t *testing.T) {
	ctx := context.Background()
	o := New()
	restore := func(in string, args ...string) error {
		_, err := o.Runner().RunStdin(ctx, strings.NewReader(in), "iptables-restore", args...)
		return err
	}
	in := "*nat\n-I POSTROUTING 1 -s 10.0.0.2/32 -j MASQUERADE\nCOMMIT\n*filter\n-I FORWARD 1 -s 10.0.0.2/32 -j ACCEPT\n-A FORWARD -d 10.0.0.2/32 -j ACCEPT\nCOMMIT\n"
	if err := restore(in, "-w", "--noflush"); err != nil {
		t.Fatal(err)
	}
	want := "rule filter/FORWARD -s 10.0.0.2/32 -j ACCEPT\nrule filter/FORWARD -d 10.0.0.2/32 -j ACCEPT\nrule nat/POSTROUTING -s 10.0.0.2/32 -j MASQUERADE\nsysctl net.ipv4.ip_forward=0\n"
	if got := o.String(); got != want {
		t.Fatalf("state:\n%s\nwant:\n%s", got, want)
	}
	// A failing line undoes the whole input: the delete before it too.
	bad := "*filter\n-D FORWARD -s 10.0.0.2/32 -j ACCEPT\n-D FORWARD -s 10.9.9.9/32 -j ACCEPT\nCOMMIT\n"
	if err := restore(bad, "-w", "--noflush"); err == nil {
		t.Error("a delete of a missing rule succeeded")
	}
	if got := o.String(); got != want {
		t.Errorf("state after a failed restore:\n%s\nwant it unchanged:\n%s", got, want)
	}
	for name, c := range map[string]struct {
		in   string
		args []string
	}{
		"no COMMIT":       {"*filter\n-A FORWARD -j ACCEPT\n", []string{"--noflush"}},
		"no table":        {"-A FORWARD -j ACCEPT\nCOMMIT\n", []string{"--noflush"}},
		"unknown table":   {"*mangle2\n-A FORWARD -j ACCEPT\nCOMMIT\n", []string{"--noflush"}},
		"a flush":         {"*filter\n-F FORWARD\nCOMMIT\n", []string{"--noflush"}},
		"without noflush": {"*filter\n-A FORWARD -j ACCEPT\nCOMMIT\n", nil},
	} {
		if err := restore(c.in, c.args...); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if got := o.String(); got != want {
			t.Errorf("%s: state changed:\n%s", name, got)
		}
	}
}
