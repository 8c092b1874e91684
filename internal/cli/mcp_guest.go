package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"banger/internal/guest"
	"banger/internal/model"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The guest tools: exec, read_file, write_file and list_dir. Each opens
// an SSH connection to the guest through the daemon (mcpServer.dialGuest)
// for its one command, so an agent that stops calling leaves nothing open
// and the VM's idle auto-stop works as usual. The commands are built by
// pure functions below (table-tested); guest paths are quoted, never
// interpreted by a shell.

// Limits of the guest tools.
const (
	execTimeoutDefault = 120
	execTimeoutMax     = 3600
	// execKillGrace is how long a timed-out command has after SIGTERM
	// before SIGKILL.
	execKillGrace    = 5
	outputCapDefault = 64 << 10
	outputCapMax     = 1 << 20
	readCapDefault   = 256 << 10
	readCapMax       = 1 << 20
	writeMax         = 8 << 20
	listCapDefault   = 500
	listCapMax       = 5000
	listDepthMax     = 5
)

// guestHome is where relative guest paths start: root's home, the work
// disk.
const guestHome = "/root"

// guestPath resolves p in the guest: relative paths are under /root. An
// empty path is /root.
func guestPath(p string) (string, error) {
	if strings.ContainsRune(p, 0) {
		return "", model.Errorf(model.EINVALID, "path %q: contains a NUL byte", p)
	}
	if p == "" {
		return guestHome, nil
	}
	if !path.IsAbs(p) {
		p = path.Join(guestHome, p)
	}
	return path.Clean(p), nil
}

type execIn struct {
	VM             string            `json:"vm" jsonschema:"the VM's name (or ID)"`
	Argv           []string          `json:"argv,omitempty" jsonschema:"the program and its arguments, run without a shell, such as [\"git\", \"status\"]; give argv or command, not both"`
	Command        string            `json:"command,omitempty" jsonschema:"a shell command line run with sh -c (pipes, redirections, && and cd work), such as \"make test 2>&1 | tail -20\"; give argv or command, not both"`
	Cwd            string            `json:"cwd,omitempty" jsonschema:"working directory in the guest; a relative path is under /root (default /root)"`
	Env            map[string]string `json:"env,omitempty" jsonschema:"environment variables for the command, added to the guest's defaults"`
	Stdin          string            `json:"stdin,omitempty" jsonschema:"text for the command's standard input (default: empty)"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty" jsonschema:"stop the command and everything it started after this many seconds"`
	MaxOutputBytes int               `json:"max_output_bytes,omitempty" jsonschema:"keep at most this many bytes of stdout and of stderr each; the start and the end are kept, the middle dropped and marked"`
}

type execOut struct {
	ExitCode        int    `json:"exit_code" jsonschema:"the command's exit status (128+N when signal N ended it; -1 when it never finished)"`
	Signal          string `json:"signal,omitempty" jsonschema:"the signal that ended the command, when one did"`
	TimedOut        bool   `json:"timed_out" jsonschema:"the command ran out of time and was stopped"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutBytes     int64  `json:"stdout_bytes" jsonschema:"how many bytes the command wrote to stdout, all told"`
	StderrBytes     int64  `json:"stderr_bytes" jsonschema:"how many bytes the command wrote to stderr, all told"`
	StdoutTruncated bool   `json:"stdout_truncated" jsonschema:"stdout was longer than output_cap_bytes: only its start and end are here"`
	StderrTruncated bool   `json:"stderr_truncated"`
	OutputCapBytes  int    `json:"output_cap_bytes" jsonschema:"the cap applied to stdout and to stderr"`
	DurationMS      int64  `json:"duration_ms"`
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// execCommandLine builds the guest command line of an exec: change to the
// working directory, then run the command under timeout(1) (which stops
// its whole process group: TERM, then KILL after execKillGrace seconds)
// through env(1) with the variables. Everything the caller gave is
// quoted; a shell line runs as sh -c.
func execCommandLine(in execIn, timeout int) (string, error) {
	switch {
	case len(in.Argv) > 0 && in.Command != "":
		return "", model.Errorf(model.EINVALID, "give argv or command, not both")
	case len(in.Argv) == 0 && in.Command == "":
		return "", model.Errorf(model.EINVALID, "give the command to run: argv (a program and its arguments) or command (a shell line)")
	}
	var words []string
	if len(in.Argv) > 0 {
		if in.Argv[0] == "" || strings.Contains(in.Argv[0], "=") {
			return "", model.Errorf(model.EINVALID, "argv[0] %q: must name a program (not empty, no '=')", in.Argv[0])
		}
		words = in.Argv
	} else {
		words = []string{"sh", "-c", in.Command}
	}
	for i, w := range words {
		if strings.ContainsRune(w, 0) {
			return "", model.Errorf(model.EINVALID, "argument %d contains a NUL byte", i)
		}
	}
	cwd, err := guestPath(in.Cwd)
	if err != nil {
		return "", fmt.Errorf("cwd: %w", err)
	}
	keys := make([]string, 0, len(in.Env))
	for k, v := range in.Env {
		if !envName.MatchString(k) {
			return "", model.Errorf(model.EINVALID, "env %q: a variable name is letters, digits and '_', not starting with a digit", k)
		}
		if strings.ContainsRune(v, 0) {
			return "", model.Errorf(model.EINVALID, "env %s: the value contains a NUL byte", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "cd -- %s && exec timeout -k %d %d env --", guest.Quote(cwd), execKillGrace, timeout)
	for _, k := range keys {
		b.WriteString(" " + guest.Quote(k+"="+in.Env[k]))
	}
	for _, w := range words {
		b.WriteString(" " + guest.Quote(w))
	}
	return b.String(), nil
}

// capWriter keeps the first and last half of max bytes written to it and
// counts them all.
type capWriter struct {
	max  int
	n    int64
	head []byte
	tail []byte // a ring of the last bytes once head is full
}

func (c *capWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	half := c.max / 2
	q := p
	if room := half - len(c.head); room > 0 {
		k := min(room, len(q))
		c.head = append(c.head, q[:k]...)
		q = q[k:]
	}
	if len(q) > 0 {
		c.tail = append(c.tail, q...)
		if keep := c.max - half; len(c.tail) > keep {
			c.tail = append(c.tail[:0], c.tail[len(c.tail)-keep:]...)
		}
	}
	return len(p), nil
}

// truncated reports whether bytes were dropped.
func (c *capWriter) truncated() bool { return c.n > int64(len(c.head)+len(c.tail)) }

// text returns what was kept, as text: the start, a marker of what was
// dropped, the end. Bytes that are not UTF-8 become U+FFFD.
func (c *capWriter) text() string {
	if !c.truncated() {
		return strings.ToValidUTF8(string(c.head)+string(c.tail), "\uFFFD")
	}
	dropped := c.n - int64(len(c.head)+len(c.tail))
	return strings.ToValidUTF8(string(c.head), "\uFFFD") + fmt.Sprintf("\n[... %d bytes not shown ...]\n", dropped) + strings.ToValidUTF8(string(c.tail), "\uFFFD")
}

func (s *mcpServer) exec(ctx context.Context, _ *mcp.CallToolRequest, in execIn) (execOut, error) {
	timeout := in.TimeoutSeconds
	if timeout == 0 {
		timeout = execTimeoutDefault
	}
	capBytes := in.MaxOutputBytes
	if capBytes == 0 {
		capBytes = outputCapDefault
	}
	line, err := execCommandLine(in, timeout)
	if err != nil {
		return execOut{}, err
	}
	conn, _, err := s.dialGuest(ctx, in.VM)
	if err != nil {
		return execOut{}, err
	}
	defer conn.Close()
	stdout, stderr := &capWriter{max: capBytes}, &capWriter{max: capBytes}
	// The guest's timeout(1) stops the command; this deadline only ends
	// a session whose guest stopped answering.
	rctx, cancel := context.WithTimeout(ctx, time.Duration(timeout+execKillGrace+15)*time.Second)
	defer cancel()
	start := time.Now()
	err = conn.Run(rctx, line, strings.NewReader(in.Stdin), stdout, stderr)
	elapsed := time.Since(start)
	out := execOut{
		Stdout: stdout.text(), Stderr: stderr.text(), StdoutBytes: stdout.n, StderrBytes: stderr.n,
		StdoutTruncated: stdout.truncated(), StderrTruncated: stderr.truncated(), OutputCapBytes: capBytes,
		DurationMS: elapsed.Milliseconds(),
	}
	var ee *guest.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		out.ExitCode, out.Signal = ee.Status, ee.Signal
		// timeout(1) exits 124 when it stopped the command with TERM, and
		// 137 when it had to KILL it.
		if elapsed >= time.Duration(timeout)*time.Second && (ee.Status == 124 || ee.Status == 137) {
			out.TimedOut = true
		}
	case rctx.Err() != nil && ctx.Err() == nil:
		out.ExitCode, out.TimedOut = -1, true
	default:
		return out, err
	}
	return out, nil
}

type readFileIn struct {
	VM       string `json:"vm" jsonschema:"the VM's name (or ID)"`
	Path     string `json:"path" jsonschema:"the file in the guest; a relative path is under /root"`
	Offset   int64  `json:"offset,omitempty" jsonschema:"the first byte to read (to read a large file in parts)"`
	MaxBytes int    `json:"max_bytes,omitempty" jsonschema:"read at most this many bytes"`
}

type readFileOut struct {
	Path          string `json:"path" jsonschema:"the file's absolute path in the guest"`
	Size          int64  `json:"size" jsonschema:"the file's size in bytes"`
	Offset        int64  `json:"offset"`
	BytesRead     int    `json:"bytes_read"`
	Content       string `json:"content,omitempty" jsonschema:"the bytes read, when they are text (UTF-8)"`
	ContentBase64 string `json:"content_base64,omitempty" jsonschema:"the bytes read, base64-encoded, when they are binary"`
	Binary        bool   `json:"binary" jsonschema:"the bytes are not text (a NUL byte, or not UTF-8)"`
	Truncated     bool   `json:"truncated" jsonschema:"the file goes on past what was read: read again from offset+bytes_read"`
}

// readFileScript prints the size of the regular file p, a newline, and at
// most n of its bytes from offset. What is not a regular file is refused
// with a message on stderr.
func readFileScript(p string, offset int64, n int) string {
	return fmt.Sprintf(`p=%s
if [ -d "$p" ]; then echo "$p is a directory (use list_dir)" >&2; exit 2; fi
if [ ! -e "$p" ]; then echo "$p: no such file" >&2; exit 2; fi
if [ ! -f "$p" ]; then echo "$p is not a regular file" >&2; exit 2; fi
if [ ! -r "$p" ]; then echo "$p: permission denied" >&2; exit 2; fi
stat -L -c %%s -- "$p" && tail -c +%d -- "$p" | head -c %d
`, guest.Quote(p), offset+1, n)
}

// classifyContent decides whether b (a window of a file) is text. A
// window cut in the middle of a UTF-8 sequence is still text: the
// sequence's start is left for the next read (n says how much of b to
// report).
func classifyContent(b []byte, more bool) (n int, binary bool) {
	if bytes.IndexByte(b, 0) >= 0 {
		return len(b), true
	}
	if utf8.Valid(b) {
		return len(b), false
	}
	if more {
		for cut := 1; cut <= utf8.UTFMax-1 && cut < len(b); cut++ {
			if utf8.Valid(b[:len(b)-cut]) && !utf8.FullRune(b[len(b)-cut:]) {
				return len(b) - cut, false
			}
		}
	}
	return len(b), true
}

// boundedBuffer keeps what a guest command prints, up to max bytes: a
// guest that sends more than the command can print fails the write, and
// with it the command.
type boundedBuffer struct {
	bytes.Buffer
	max int
}

// errTooMuch is a guest answering more than was asked.
var errTooMuch = errors.New("the guest sent more than the command prints; is its shell or coreutils changed?")

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errTooMuch
	}
	return b.Buffer.Write(p)
}

// guestFailure turns a guest script's refusal (its stderr) into an error
// the agent can act on.
func guestFailure(err error) error {
	var ee *guest.ExitError
	if errors.As(err, &ee) && ee.Status == 2 && strings.TrimSpace(ee.Stderr) != "" {
		return model.Errorf(model.EINVALID, "%s", strings.TrimSpace(ee.Stderr))
	}
	return err
}

func (s *mcpServer) readFile(ctx context.Context, _ *mcp.CallToolRequest, in readFileIn) (readFileOut, error) {
	p, err := guestPath(in.Path)
	if err != nil {
		return readFileOut{}, err
	}
	max := in.MaxBytes
	if max == 0 {
		max = readCapDefault
	}
	conn, _, err := s.dialGuest(ctx, in.VM)
	if err != nil {
		return readFileOut{}, err
	}
	defer conn.Close()
	buf := &boundedBuffer{max: max + 32}
	if err := conn.Run(ctx, readFileScript(p, in.Offset, max), nil, buf, nil); err != nil {
		return readFileOut{}, guestFailure(err)
	}
	sizeLine, data, ok := bytes.Cut(buf.Bytes(), []byte("\n"))
	size, perr := strconv.ParseInt(string(sizeLine), 10, 64)
	if !ok || perr != nil || len(data) > max {
		return readFileOut{}, fmt.Errorf("read_file: the guest answered %d bytes that are not a size and the file", buf.Len())
	}
	out := readFileOut{Path: p, Size: size, Offset: in.Offset}
	more := in.Offset+int64(len(data)) < size
	n, binary := classifyContent(data, more)
	out.BytesRead, out.Binary = n, binary
	out.Truncated = in.Offset+int64(n) < size
	if binary {
		out.ContentBase64 = base64.StdEncoding.EncodeToString(data[:n])
	} else {
		out.Content = string(data[:n])
	}
	return out, nil
}

type writeFileIn struct {
	VM            string  `json:"vm" jsonschema:"the VM's name (or ID)"`
	Path          string  `json:"path" jsonschema:"the file in the guest; a relative path is under /root"`
	Content       *string `json:"content,omitempty" jsonschema:"the text to write; give content or content_base64"`
	ContentBase64 string  `json:"content_base64,omitempty" jsonschema:"the bytes to write, base64-encoded (for binary files); give content or content_base64"`
	Mode          string  `json:"mode,omitempty" jsonschema:"permissions in octal, such as 0644 or 0755 (default: kept for an existing file, 0644 for a new one)"`
	Append        bool    `json:"append,omitempty" jsonschema:"add to the end of the file instead of replacing it"`
	CreateDirs    *bool   `json:"create_dirs,omitempty" jsonschema:"create missing parent directories (default true)"`
}

type writeFileOut struct {
	Path         string `json:"path" jsonschema:"the file's absolute path in the guest"`
	BytesWritten int    `json:"bytes_written"`
	Size         int64  `json:"size" jsonschema:"the file's size afterwards"`
}

var octalMode = regexp.MustCompile(`^0?[0-7]{3,4}$`)

// writeFileScript writes its standard input to p (appending or
// replacing), creating p's directory when mkdirs, setting mode when given,
// and prints the file's size.
func writeFileScript(p, mode string, appendTo, mkdirs bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "p=%s\n", guest.Quote(p))
	b.WriteString(`if [ -d "$p" ]; then echo "$p is a directory" >&2; exit 2; fi` + "\n")
	if mkdirs {
		b.WriteString(`d=$(dirname -- "$p") && mkdir -p -- "$d" || exit 2` + "\n")
	}
	redir := ">"
	if appendTo {
		redir = ">>"
	}
	fmt.Fprintf(&b, `cat %s "$p" || exit 2`+"\n", redir)
	if mode != "" {
		fmt.Fprintf(&b, `chmod %s -- "$p" || exit 2`+"\n", mode)
	}
	b.WriteString(`stat -c %s -- "$p"` + "\n")
	return b.String()
}

func (s *mcpServer) writeFile(ctx context.Context, _ *mcp.CallToolRequest, in writeFileIn) (writeFileOut, error) {
	p, err := guestPath(in.Path)
	if err != nil {
		return writeFileOut{}, err
	}
	var data []byte
	switch {
	case in.Content != nil && in.ContentBase64 != "":
		return writeFileOut{}, model.Errorf(model.EINVALID, "give content or content_base64, not both")
	case in.Content != nil:
		data = []byte(*in.Content)
	case in.ContentBase64 != "":
		if data, err = base64.StdEncoding.DecodeString(in.ContentBase64); err != nil {
			return writeFileOut{}, model.Errorf(model.EINVALID, "content_base64: %v", err)
		}
	default:
		return writeFileOut{}, model.Errorf(model.EINVALID, "give the file's content: content (text) or content_base64 (bytes); an empty content makes an empty file")
	}
	if len(data) > writeMax {
		return writeFileOut{}, model.Errorf(model.EINVALID, "content of %d bytes: at most %d per call (write a large file in parts with append, or copy it with workspace_prepare)", len(data), writeMax)
	}
	if in.Mode != "" && !octalMode.MatchString(in.Mode) {
		return writeFileOut{}, model.Errorf(model.EINVALID, "mode %q: give permissions in octal, such as 0644 or 0755", in.Mode)
	}
	mkdirs := in.CreateDirs == nil || *in.CreateDirs
	conn, _, err := s.dialGuest(ctx, in.VM)
	if err != nil {
		return writeFileOut{}, err
	}
	defer conn.Close()
	out := &boundedBuffer{max: 64}
	if err := conn.Run(ctx, writeFileScript(p, in.Mode, in.Append, mkdirs), bytes.NewReader(data), out, nil); err != nil {
		return writeFileOut{}, guestFailure(err)
	}
	size, _ := strconv.ParseInt(strings.TrimSpace(out.String()), 10, 64)
	return writeFileOut{Path: p, BytesWritten: len(data), Size: size}, nil
}

type listDirIn struct {
	VM         string `json:"vm" jsonschema:"the VM's name (or ID)"`
	Path       string `json:"path,omitempty" jsonschema:"the directory in the guest; a relative path is under /root (default /root)"`
	Depth      int    `json:"depth,omitempty" jsonschema:"how many levels to list: 1 is the directory's own entries"`
	MaxEntries int    `json:"max_entries,omitempty" jsonschema:"list at most this many entries"`
}

type dirEntry struct {
	Name   string  `json:"name" jsonschema:"the path relative to the listed directory"`
	Type   string  `json:"type" jsonschema:"file, dir, symlink, fifo, socket, char, block or other"`
	Size   int64   `json:"size"`
	Mode   string  `json:"mode" jsonschema:"permissions in octal"`
	MTime  float64 `json:"mtime" jsonschema:"last modification, in seconds since 1970"`
	Target string  `json:"target,omitempty" jsonschema:"where a symlink points"`
}

type listDirOut struct {
	Path      string     `json:"path" jsonschema:"the directory's absolute path in the guest"`
	Entries   []dirEntry `json:"entries"`
	Truncated bool       `json:"truncated" jsonschema:"there are more entries than max_entries"`
}

// listDirScript lists directory p down to depth levels as NUL-separated
// records (type, size, mode, mtime, then the relative name and the link
// target as fields of their own), at most n+1 entries.
func listDirScript(p string, depth, n int) string {
	return fmt.Sprintf(`p=%s
if [ ! -e "$p" ]; then echo "$p: no such directory" >&2; exit 2; fi
if [ ! -d "$p" ]; then echo "$p is not a directory (use read_file)" >&2; exit 2; fi
cd -- "$p" || exit 2
find . -mindepth 1 -maxdepth %d -printf '%%y %%s %%m %%T@\0%%P\0%%l\0' | head -z -n %d
`, guest.Quote(p), depth, 3*(n+1))
}

var findTypes = map[string]string{"f": "file", "d": "dir", "l": "symlink", "p": "fifo", "s": "socket", "c": "char", "b": "block"}

// parseListing reads listDirScript's output, keeping at most n entries in
// name order.
func parseListing(b []byte, n int) ([]dirEntry, bool, error) {
	fields := bytes.Split(b, []byte{0})
	if len(fields) > 0 && len(fields[len(fields)-1]) == 0 {
		fields = fields[:len(fields)-1]
	}
	if len(fields)%3 != 0 {
		return nil, false, fmt.Errorf("list_dir: the guest's listing has %d fields, not records of three", len(fields))
	}
	entries := []dirEntry{}
	for i := 0; i < len(fields); i += 3 {
		meta := strings.Fields(string(fields[i]))
		if len(meta) != 4 {
			return nil, false, fmt.Errorf("list_dir: bad record %q from the guest", fields[i])
		}
		e := dirEntry{Name: strings.ToValidUTF8(string(fields[i+1]), "\uFFFD"), Type: findTypes[meta[0]], Target: strings.ToValidUTF8(string(fields[i+2]), "\uFFFD")}
		if e.Type == "" {
			e.Type = "other"
		}
		e.Size, _ = strconv.ParseInt(meta[1], 10, 64)
		e.Mode = "0" + meta[2]
		if len(meta[2]) == 4 {
			e.Mode = meta[2]
		}
		e.MTime, _ = strconv.ParseFloat(meta[3], 64)
		entries = append(entries, e)
	}
	truncated := len(entries) > n
	if truncated {
		entries = entries[:n]
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, truncated, nil
}

func (s *mcpServer) listDir(ctx context.Context, _ *mcp.CallToolRequest, in listDirIn) (listDirOut, error) {
	p, err := guestPath(in.Path)
	if err != nil {
		return listDirOut{}, err
	}
	depth, n := in.Depth, in.MaxEntries
	if depth == 0 {
		depth = 1
	}
	if n == 0 {
		n = listCapDefault
	}
	conn, _, err := s.dialGuest(ctx, in.VM)
	if err != nil {
		return listDirOut{}, err
	}
	defer conn.Close()
	// A record is at most two paths (4 KiB each) and its numbers.
	buf := &boundedBuffer{max: (n + 1) * 8300}
	if err := conn.Run(ctx, listDirScript(p, depth, n), nil, buf, nil); err != nil {
		return listDirOut{}, guestFailure(err)
	}
	entries, truncated, err := parseListing(buf.Bytes(), n)
	if err != nil {
		return listDirOut{}, err
	}
	return listDirOut{Path: p, Entries: entries, Truncated: truncated}, nil
}

func (s *mcpServer) addGuestTools(srv *mcp.Server) {
	no, yes := false, true
	addTool(srv, &mcp.Tool{
		Name:  "exec",
		Title: "Run a command in a VM",
		Description: "Run a command in a running VM as root and return its exit code, stdout and stderr (a non-zero exit is a result, not an error). " +
			"Give argv (no shell) or command (a shell line). Output beyond max_output_bytes keeps its start and end. " +
			"The command and everything it started are stopped after timeout_seconds. Nothing is interactive: stdin is the text you give.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &yes, OpenWorldHint: &yes},
	}, func(sc *jsonschema.Schema) {
		bounds(sc, "timeout_seconds", 1, execTimeoutMax, execTimeoutDefault)
		bounds(sc, "max_output_bytes", 1024, outputCapMax, outputCapDefault)
		one := 1
		prop(sc, "argv").MinItems = &one
	}, s.exec)
	addTool(srv, &mcp.Tool{
		Name:  "read_file",
		Title: "Read a file in a VM",
		Description: "Read a file in a VM. Text comes back as content; binary files (a NUL byte, or not UTF-8) as content_base64 with binary true. " +
			"At most max_bytes are read from offset: truncated says the file goes on.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &no},
	}, func(sc *jsonschema.Schema) {
		bounds(sc, "max_bytes", 1, readCapMax, readCapDefault)
		zero, top := 0.0, float64(1<<62)
		prop(sc, "offset").Minimum, prop(sc, "offset").Maximum = &zero, &top
	}, s.readFile)
	addTool(srv, &mcp.Tool{
		Name:  "write_file",
		Title: "Write a file in a VM",
		Description: fmt.Sprintf("Write a file in a VM (replacing it, or appending), creating missing directories. "+
			"Give content (text) or content_base64 (bytes); at most %d MiB per call.", writeMax>>20),
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &yes, OpenWorldHint: &no},
	}, func(sc *jsonschema.Schema) {
		prop(sc, "mode").Pattern = octalMode.String()
	}, s.writeFile)
	addTool(srv, &mcp.Tool{
		Name:        "list_dir",
		Title:       "List a directory in a VM",
		Description: "List a directory in a VM: names, types, sizes, modes, modification times and symlink targets, down to depth levels.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &no},
	}, func(sc *jsonschema.Schema) {
		bounds(sc, "depth", 1, listDepthMax, 1)
		bounds(sc, "max_entries", 1, listCapMax, listCapDefault)
	}, s.listDir)
}
