// Command testsum reads `go test -json` on stdin, prints the test output
// of failures and a one-line summary per run, and appends the counts to a
// tally file so scripts/test.sh can print the grand total last.
//
//	go test -json ./... | testsum -tier unit -tally /tmp/tally
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	tier := flag.String("tier", "", "tier name for the summary line")
	tally := flag.String("tally", "", "file to append \"passed failed skipped\" to")
	failList := flag.String("failures", "", "file to append the names of failed tests to, one a line")
	verbose := flag.Bool("v", false, "print every test's result")
	flag.Parse()

	outputs := map[string][]string{}
	var passed, failed, skipped int
	var failures []string
	var skips []string
	pkgFail := map[string]bool{}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil {
			// Build errors and the like arrive as plain text.
			fmt.Println(string(line))
			continue
		}
		key := ev.Package + " " + ev.Test
		switch ev.Action {
		case "output":
			outputs[key] = append(outputs[key], ev.Output)
			if *verbose && ev.Test == "" && strings.HasPrefix(ev.Output, "ok") {
				fmt.Print(ev.Output)
			}
		case "pass":
			if ev.Test != "" {
				passed++
				if *verbose {
					fmt.Printf("PASS %s (%.1fs)\n", key, ev.Elapsed)
				}
			}
			delete(outputs, key)
		case "skip":
			if ev.Test != "" {
				skipped++
				reason := ""
				for _, o := range outputs[key] {
					if strings.Contains(o, "skip") {
						reason = strings.TrimSpace(o)
					}
				}
				skips = append(skips, fmt.Sprintf("%s: %s", key, reason))
			}
			delete(outputs, key)
		case "fail":
			if ev.Test != "" {
				failed++
				failures = append(failures, key)
				fmt.Printf("--- FAIL %s (%.1fs)\n", key, ev.Elapsed)
				for _, o := range outputs[key] {
					fmt.Print("    " + o)
				}
			} else {
				pkgFail[ev.Package] = true
				// A package that fails without a failing test (build
				// error, panic in TestMain, timeout) counts as a failure.
				hasTest := false
				for _, f := range failures {
					if strings.HasPrefix(f, ev.Package+" ") {
						hasTest = true
					}
				}
				if !hasTest {
					failed++
					failures = append(failures, ev.Package+" (package)")
					fmt.Printf("--- FAIL %s (package)\n", ev.Package)
					for _, o := range outputs[key] {
						fmt.Print("    " + o)
					}
				}
			}
			delete(outputs, key)
		}
	}
	sort.Strings(skips)
	if len(skips) > 0 && *verbose {
		fmt.Printf("skipped in %s tier:\n", *tier)
		for _, s := range skips {
			fmt.Println("  " + s)
		}
	}
	fmt.Printf("%s tier: %d passed, %d failed, %d skipped\n", *tier, passed, failed, skipped)
	if *tally != "" {
		f, err := os.OpenFile(*tally, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%d %d %d\n", passed, failed, skipped)
			f.Close()
		}
	}
	if *failList != "" && len(failures) > 0 {
		f, err := os.OpenFile(*failList, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			for _, k := range failures {
				fmt.Fprintf(f, "%s tier: %s\n", *tier, k)
			}
			f.Close()
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}
