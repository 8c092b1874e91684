package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/miekg/dns"
)

// TestMain doubles as a DNS client: with BANGER_DNS_QUERY=name@server:port
// the test binary (run by a test inside a daemon's netns) asks for name's
// A record, prints the answers and exits.
func TestMain(m *testing.M) {
	if q := os.Getenv("BANGER_DNS_QUERY"); q != "" {
		os.Exit(dnsQuery(q))
	}
	code := m.Run()
	removeDebianRoot()
	os.Exit(code)
}

func dnsQuery(q string) int {
	var name, server string
	for i := len(q) - 1; i >= 0; i-- {
		if q[i] == '@' {
			name, server = q[:i], q[i+1:]
			break
		}
	}
	msg := new(dns.Msg)
	msg.SetQuestion(dns.Fqdn(name), dns.TypeA)
	resp, err := dns.Exchange(msg, server)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("rcode:", dns.RcodeToString[resp.Rcode])
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			fmt.Println("A:", a.A.String())
		}
	}
	return 0
}
