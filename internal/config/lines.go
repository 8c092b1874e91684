package config

import (
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// keyLines maps each key of a TOML document, dotted from the root (array
// tables are numbered: "file_sync.0.host"), to the line it is on. It is
// only used to point value errors at their line, so a document it cannot
// parse gives what it saw so far.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	var table []string
	arrayCount := map[string]int{}
	for p.NextExpression() {
		expr := p.Expression()
		switch expr.Kind {
		case unstable.Table:
			table = keyParts(expr.Key())
		case unstable.ArrayTable:
			parts := keyParts(expr.Key())
			name := strings.Join(parts, ".")
			idx := arrayCount[name]
			arrayCount[name] = idx + 1
			table = append(parts, strconv.Itoa(idx))
		case unstable.KeyValue:
			it := expr.Key()
			var parts []string
			line := 0
			for it.Next() {
				n := it.Node()
				parts = append(parts, string(n.Data))
				if line == 0 {
					line = p.Shape(n.Raw).Start.Line
				}
			}
			full := append(append([]string(nil), table...), parts...)
			lines[strings.Join(full, ".")] = line
		}
	}
	return lines
}

func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}
