package model

import (
	"strings"
	"testing"
)

func TestParseEgress(t *testing.T) {
	tests := []struct {
		in      string
		want    string // String() of the result
		wantErr string
	}{
		{"open", "open", ""},
		{" NONE ", "none", ""},
		{"allow=10.99.0.1", "allow=10.99.0.1/32", ""},
		{"allow=10.0.0.0/8, Example.COM., *.github.com", "allow=10.0.0.0/8,example.com,*.github.com", ""},
		{"allow=a.test,a.test,10.0.0.0/8,10.0.0.0/8", "allow=a.test,10.0.0.0/8", ""},
		{"allow=_dmarc.example.com", "allow=_dmarc.example.com", ""},
		{"allow=localhost", "allow=localhost", ""},

		{"", "", "unknown mode"},
		{"closed", "", "unknown mode"},
		{"open=1.2.3.4", "", "takes no list"},
		{"allow", "", "allow needs a list"},
		{"allow=", "", "allow needs a list"},
		{"allow=a.test,,b.test", "", "empty entry"},
		{"allow=a.test,", "", "empty entry"},
		{"allow=10.0.0.1/8", "", "did you mean 10.0.0.0/8"},
		{"allow=10.0.0.256", "", "not an IPv4 address"},
		{"allow=10.0.0.0/33", "", "not an IPv4 address"},
		{"allow=300.1.1.1/32", "", "not an IPv4 address"},
		{"allow=::1", "", "IPv6 is not supported"},
		{"allow=2001:db8::/32", "", "IPv6 is not supported"},
		{"allow=exa mple.com", "", "not a domain name"},
		{"allow=*", "", "not a domain name"},
		{"allow=*.", "", "not a domain name"},
		{"allow=a.*.com", "", "wildcard may only be"},
		{"allow=*foo.com", "", "wildcard may only be"},
		{"allow=**.foo.com", "", "wildcard may only be"},
		{"allow=-a.com", "", "starts or ends with '-'"},
		{"allow=a..com", "", "empty label"},
		{"allow=" + strings.Repeat("a", 64) + ".com", "", "longer than 63"},
		{"allow=foo.123", "", "last label is numeric"},
		{"allow=evil.com;rm -rf", "", "not a domain name"},
		{"allow=evil.com\"}", "", "not a domain name"},
		{"allow=" + strings.Repeat("a.", 300) + "com", "", "longer than 253"},
	}
	for _, tt := range tests {
		got, err := ParseEgress(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseEgress(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			if err != nil && ErrorCode(err) != EINVALID {
				t.Errorf("ParseEgress(%q): code %s, want EINVALID", tt.in, ErrorCode(err))
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseEgress(%q): %v", tt.in, err)
			continue
		}
		if got.String() != tt.want {
			t.Errorf("ParseEgress(%q) = %q; want %q", tt.in, got, tt.want)
		}
		// The canonical form parses to itself.
		again, err := ParseEgress(got.String())
		if err != nil || again.String() != got.String() {
			t.Errorf("ParseEgress(%q) again = %q, %v", got, again, err)
		}
	}
}

func TestEgressTooManyEntries(t *testing.T) {
	var list []string
	for i := 0; i <= MaxEgressEntries; i++ {
		list = append(list, "h"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+".test")
	}
	if _, err := (EgressPolicy{Mode: EgressAllow, Allow: list}).Normalize(); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("too many entries: %v", err)
	}
}

func TestEgressNormalizeStructured(t *testing.T) {
	tests := []struct {
		in      EgressPolicy
		want    string
		wantErr string
	}{
		{EgressPolicy{}, "open", ""},
		{EgressPolicy{Mode: EgressNone}, "none", ""},
		{EgressPolicy{Mode: "deny"}, "", "use open, none or allow"},
		{EgressPolicy{Mode: EgressNone, Allow: []string{"a.test"}}, "", "takes no allow list"},
		{EgressPolicy{Mode: EgressAllow}, "", "list is empty"},
		{EgressPolicy{Mode: EgressAllow, Allow: []string{"1.2.3.4"}}, "allow=1.2.3.4/32", ""},
	}
	for _, tt := range tests {
		got, err := tt.in.Normalize()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Normalize(%+v) = %v, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("Normalize(%+v) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestMatchDomain(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "EXAMPLE.com.", true},
		{"example.com", "www.example.com", false},
		{"example.com", "badexample.com", false},
		{"*.github.com", "api.github.com", true},
		{"*.github.com", "a.b.github.com.", true},
		{"*.github.com", "github.com", false},
		{"*.github.com", "evilgithub.com", false},
		{"*.github.com", "github.com.evil.net", false},
		{"*.github.com", ".github.com", false},
	}
	for _, tt := range tests {
		if got := MatchDomain(tt.pattern, tt.name); got != tt.want {
			t.Errorf("MatchDomain(%q, %q) = %v; want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestEgressAllowsName(t *testing.T) {
	p, err := ParseEgress("allow=10.0.0.0/8,allowed.test,*.github.com")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"allowed.test": true, "api.github.com": true, "denied.test": false, "10.0.0.1": false} {
		if got := p.AllowsName(name); got != want {
			t.Errorf("allow AllowsName(%q) = %v", name, got)
		}
	}
	if (EgressPolicy{}).AllowsName("x.test") != true || (EgressPolicy{Mode: EgressNone}).AllowsName("x.test") {
		t.Error("open must allow and none refuse every name")
	}
	if got := p.Prefixes(); len(got) != 1 || got[0].String() != "10.0.0.0/8" {
		t.Errorf("Prefixes = %v", got)
	}
	if got := p.Domains(); strings.Join(got, ",") != "allowed.test,*.github.com" {
		t.Errorf("Domains = %v", got)
	}
}
