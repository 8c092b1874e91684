package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain doubles as a hostile client: with BANGER_HOSTILE set, the test
// binary (run by a test as another user) talks to a daemon's socket
// directly, as no banger CLI would, and prints what happened.
func TestMain(m *testing.M) {
	if mode := os.Getenv("BANGER_HOSTILE"); mode != "" {
		os.Exit(hostile(mode, os.Args[len(os.Args)-3:]))
	}
	os.Exit(m.Run())
}

// floodResult counts how a daemon treated a flood of connections.
type floodResult struct {
	// Status counts answers by HTTP status; "closed" are connections
	// closed without an answer, "open" those still open at the end.
	Status map[string]int `json:"status"`
	// Messages holds one error message per status, and per limit for
	// refusals naming one ("429 limits.connections"): a flood meets
	// several limits at once and each must be seen.
	Messages map[string]string `json:"messages"`
	// SlowestClose is how long the last closed connection was held.
	SlowestClose string `json:"slowest_close"`
}

// hostile runs one hostile client. args are the socket, a count and a
// request (for "raw", the count is ignored).
func hostile(mode string, args []string) int {
	sock, count, req := args[0], args[1], args[2]
	req = strings.ReplaceAll(req, `\r\n`, "\r\n")
	switch mode {
	case "raw":
		conn, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		defer conn.Close()
		io.WriteString(conn, req)
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		out, _ := io.ReadAll(conn)
		os.Stdout.Write(out)
		return 0
	case "flood":
		n, _ := strconv.Atoi(count)
		res := floodResult{Status: map[string]int{}, Messages: map[string]string{}}
		var mu sync.Mutex
		var slowest time.Duration
		var wg sync.WaitGroup
		var conns []net.Conn
		for i := 0; i < n; i++ {
			conn, err := net.Dial("unix", sock)
			if err != nil {
				mu.Lock()
				res.Status["dial error"]++
				mu.Unlock()
				continue
			}
			conns = append(conns, conn)
			start := time.Now()
			io.WriteString(conn, req)
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(conn)
				line, err := br.ReadString('\n')
				status := "closed"
				msg := ""
				switch {
				case err != nil && len(line) == 0:
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						status = "open"
					}
				default:
					f := strings.Fields(line)
					if len(f) >= 2 {
						status = f[1]
					}
					rest, _ := io.ReadAll(br)
					if i := strings.Index(string(rest), "{"); i >= 0 {
						msg = strings.TrimSpace(string(rest[i:]))
					}
				}
				took := time.Since(start)
				mu.Lock()
				defer mu.Unlock()
				res.Status[status]++
				if msg != "" {
					key := status
					if i := strings.Index(msg, "config key "); i >= 0 {
						k := msg[i+len("config key "):]
						if j := strings.IndexAny(k, ");, "); j >= 0 {
							k = k[:j]
						}
						key += " " + k
					}
					res.Messages[key] = msg
				}
				if status != "open" && took > slowest {
					slowest = took
				}
			}()
		}
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
		res.SlowestClose = slowest.Round(100 * time.Millisecond).String()
		json.NewEncoder(os.Stdout).Encode(res)
		return 0
	case "tarpit":
		// A mirror that takes connections and never answers.
		ln, err := net.Listen("tcp", sock)
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			return 1
		}
		fmt.Println("listening")
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			go io.Copy(io.Discard, c)
		}
	}
	fmt.Fprintln(os.Stderr, "unknown hostile mode", mode)
	return 2
}
