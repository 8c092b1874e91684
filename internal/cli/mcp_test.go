package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/hostexec"
	"banger/internal/model"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpEnv is an MCP client session with banger's server, over in-memory
// transports, in front of a test backend.
type mcpEnv struct {
	t  *testing.T
	b  *testBackend
	cs *mcp.ClientSession

	mu       sync.Mutex
	progress []string
}

func newMCPEnv(t *testing.T) *mcpEnv {
	t.Helper()
	b := newTestBackend(t)
	app := serveBackend(t, b)
	e := &mcpEnv{t: t, b: b}
	srv := newMCPServer(app, hostexec.Real{})
	st, ct := mcp.NewInMemoryTransports()
	ctx := context.Background()
	ss, err := srv.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.progress = append(e.progress, req.Params.Message)
		},
	})
	cs, err := client.Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	e.cs = cs
	// A running VM with a guest behind it.
	b.addVM("dev", model.VMStateRunning, newFakeGuest(t, app))
	return e
}

// call calls a tool with a progress token and returns its result: the
// structured content decoded into out (when not nil), and its error text
// when it is a tool error.
func (e *mcpEnv) call(name string, args map[string]any, out any) (errText string) {
	e.t.Helper()
	params := &mcp.CallToolParams{Name: name, Arguments: args}
	params.SetProgressToken("tok-" + name)
	res, err := e.cs.CallTool(context.Background(), params)
	if err != nil {
		e.t.Fatalf("%s: protocol error (the server must answer with a tool error): %v", name, err)
	}
	if res.IsError {
		var b strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				b.WriteString(tc.Text)
			}
		}
		if b.Len() == 0 {
			e.t.Fatalf("%s: a tool error without a message", name)
		}
		return b.String()
	}
	if out != nil {
		raw, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(raw, out); err != nil {
			e.t.Fatalf("%s: structured content %s: %v", name, raw, err)
		}
	}
	return ""
}

// mustCall is call for a tool that must succeed.
func (e *mcpEnv) mustCall(name string, args map[string]any, out any) {
	e.t.Helper()
	if msg := e.call(name, args, out); msg != "" {
		e.t.Fatalf("%s %v: tool error %q", name, args, msg)
	}
}

// refuses checks a call is a tool error saying want.
func (e *mcpEnv) refuses(want, name string, args map[string]any) {
	e.t.Helper()
	msg := e.call(name, args, nil)
	if msg == "" || !strings.Contains(msg, want) {
		e.t.Errorf("%s %v: want a tool error saying %q, got %q", name, args, want, msg)
	}
}

func TestMCPToolsAndSchemas(t *testing.T) {
	e := newMCPEnv(t)
	res, err := e.cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
		if len(tool.Description) < 40 {
			t.Errorf("tool %s: description %q is too thin for an agent to act on", tool.Name, tool.Description)
		}
		raw, _ := json.Marshal(tool.InputSchema)
		var schema struct {
			Type                 string `json:"type"`
			AdditionalProperties any    `json:"additionalProperties"`
			Properties           map[string]struct {
				Description string `json:"description"`
			} `json:"properties"`
		}
		if err := json.Unmarshal(raw, &schema); err != nil {
			t.Fatal(err)
		}
		if schema.Type != "object" || schema.AdditionalProperties == nil {
			t.Errorf("tool %s: input schema %s: want an object refusing unknown arguments", tool.Name, raw)
		}
		for p, s := range schema.Properties {
			if s.Description == "" {
				t.Errorf("tool %s: argument %s has no description", tool.Name, p)
			}
		}
	}
	sort.Strings(names)
	want := []string{"exec", "list_dir", "read_file", "vm_create", "vm_fork", "vm_inspect", "vm_list", "vm_rm", "vm_start", "vm_stop", "vm_suspend",
		"workspace_diff", "workspace_fetch", "workspace_log", "workspace_prepare", "write_file"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("tools %v; want %v", names, want)
	}
}

func TestMCPVMTools(t *testing.T) {
	e := newMCPEnv(t)
	var created vmOut
	e.mustCall("vm_create", map[string]any{"name": "box", "memory": "1G", "disk_size": "4G", "nat": true, "auto_stop": "30m"}, &created)
	if created.VM.Name != "box" || created.VM.State != "running" || !strings.Contains(created.Hint, "exec") {
		t.Errorf("vm_create: %+v", created)
	}
	req := e.b.created
	if req.MemoryMiB != 1024 || req.WorkDiskSizeBytes != 4<<30 || !req.NATEnabled || !req.NATSet || req.AutoStopAfterSeconds == nil || *req.AutoStopAfterSeconds != 1800 || len(req.SSHPublicKeys) == 0 {
		t.Errorf("create request: %+v", req)
	}
	// Notifications are handled apart from results: they may come a
	// moment later.
	got := ""
	harnessWait(t, func() bool {
		e.mu.Lock()
		got = strings.Join(e.progress, "\n")
		e.mu.Unlock()
		return strings.Contains(got, "disks: made") && strings.Contains(got, "ready: SSH answered")
	}, "vm_create's progress")

	var list vmListOut
	e.mustCall("vm_list", nil, &list)
	if len(list.VMs) != 2 {
		t.Errorf("vm_list: %+v", list)
	}
	var insp vmInspectOut
	e.mustCall("vm_inspect", map[string]any{"name": "box"}, &insp)
	if insp.VM.ID != "id-box" {
		t.Errorf("vm_inspect: %+v", insp)
	}
	e.refuses("ECONFLICT: vm box is running", "vm_rm", map[string]any{"name": "box"})
	var suspended vmOut
	e.mustCall("vm_suspend", map[string]any{"name": "box"}, &suspended)
	if suspended.VM.State != "suspended" || !strings.Contains(suspended.Hint, "vm_start") {
		t.Errorf("vm_suspend: %+v", suspended)
	}
	e.refuses("ECONFLICT: vm box is suspended; only a running VM", "vm_suspend", map[string]any{"name": "box"})
	var resumed vmOut
	e.mustCall("vm_start", map[string]any{"name": "box"}, &resumed)
	if resumed.VM.State != "running" {
		t.Errorf("vm_start of a suspended VM: %+v", resumed)
	}
	var forked vmForkOut
	e.mustCall("vm_fork", map[string]any{"name": "box", "count": 2}, &forked)
	if len(forked.Children) != 2 || forked.Children[0].Name != "box-1" || forked.Children[1].Name != "box-2" || forked.Children[0].State != "running" {
		t.Errorf("vm_fork: %+v", forked)
	}
	e.refuses("count 99: use 1 to 16", "vm_fork", map[string]any{"name": "box", "count": 99})
	e.refuses("must be a DNS label", "vm_fork", map[string]any{"name": "box", "names": []string{"Bad Name!"}})
	var stopped vmOut
	e.mustCall("vm_stop", map[string]any{"name": "box"}, &stopped)
	if stopped.VM.State != "stopped" {
		t.Errorf("vm_stop: %+v", stopped)
	}
	e.mustCall("vm_rm", map[string]any{"name": "box"}, nil)

	// Bad arguments are tool errors, caught by the schema or by banger.
	e.refuses("EINVALID", "vm_create", map[string]any{"name": "Bad_Name"})
	e.refuses("memory", "vm_create", map[string]any{"name": "ok", "memory": "lots"})
	e.refuses("vcpus", "vm_create", map[string]any{"name": "ok", "vcpus": 99})
	e.refuses("egress", "vm_create", map[string]any{"name": "ok", "egress": "closed"})
	e.refuses("name", "vm_create", map[string]any{})
	e.refuses("colour", "vm_create", map[string]any{"name": "ok", "colour": "blue"})
	e.refuses("ENOTFOUND: vm \"ghost\" not found", "vm_start", map[string]any{"name": "ghost"})
	// The daemon's failure is the call's.
	e.refuses("EINTERNAL: internal error: the backend panicked", "vm_inspect", map[string]any{"name": "panic"})
	e.mustCall("vm_list", nil, nil)
}

func TestMCPExec(t *testing.T) {
	e := newMCPEnv(t)
	dir := t.TempDir()
	var out execOut
	e.mustCall("exec", map[string]any{"vm": "dev", "argv": []string{"sh", "-c", `printf '%s|%s|' "$PWD" "$GREETING"; cat; echo err >&2; exit 3`},
		"cwd": dir, "env": map[string]string{"GREETING": "it's me"}, "stdin": "from stdin"}, &out)
	if out.ExitCode != 3 || out.Stdout != dir+"|it's me|from stdin" || out.Stderr != "err\n" || out.TimedOut || out.OutputCapBytes != outputCapDefault {
		t.Errorf("exec argv: %+v", out)
	}
	e.mustCall("exec", map[string]any{"vm": "dev", "command": "echo a b | wc -w; ls nonexistent-file 2>/dev/null || echo missing", "cwd": dir}, &out)
	if out.ExitCode != 0 || out.Stdout != "2\nmissing\n" {
		t.Errorf("exec command: %+v", out)
	}
	// Output past the cap keeps its start and end, and says so.
	e.mustCall("exec", map[string]any{"vm": "dev", "command": "seq 1 100000", "max_output_bytes": 2048}, &out)
	if !out.StdoutTruncated || out.StdoutBytes != 588895 || !strings.HasPrefix(out.Stdout, "1\n2\n3\n") || !strings.HasSuffix(out.Stdout, "99999\n100000\n") || !strings.Contains(out.Stdout, "bytes not shown") || len(out.Stdout) > 2100 {
		t.Errorf("exec capped: truncated %v, %d bytes, %q...%q", out.StdoutTruncated, out.StdoutBytes, out.Stdout[:20], out.Stdout[len(out.Stdout)-20:])
	}
	// A command past its time is stopped, children included.
	start := time.Now()
	e.mustCall("exec", map[string]any{"vm": "dev", "command": "sleep 30 & sleep 30; echo never", "timeout_seconds": 1}, &out)
	if !out.TimedOut || out.ExitCode != 124 || strings.Contains(out.Stdout, "never") || time.Since(start) > 10*time.Second {
		t.Errorf("exec timeout: %+v after %s", out, time.Since(start))
	}

	e.refuses("give argv or command, not both", "exec", map[string]any{"vm": "dev", "argv": []string{"true"}, "command": "true"})
	e.refuses("give the command to run", "exec", map[string]any{"vm": "dev"})
	e.refuses("env \"1X\"", "exec", map[string]any{"vm": "dev", "argv": []string{"true"}, "env": map[string]string{"1X": "y"}})
	e.refuses("timeout_seconds", "exec", map[string]any{"vm": "dev", "argv": []string{"true"}, "timeout_seconds": 0.5})
	e.refuses("timeout_seconds", "exec", map[string]any{"vm": "dev", "argv": []string{"true"}, "timeout_seconds": 99999})
	e.refuses("argv", "exec", map[string]any{"vm": "dev", "argv": "true"})
	e.refuses("ENOTFOUND", "exec", map[string]any{"vm": "nope", "argv": []string{"true"}})
	e.b.addVM("off", model.VMStateStopped, nil)
	e.refuses("ECONFLICT: vm \"off\" is stopped; start it", "exec", map[string]any{"vm": "off", "argv": []string{"true"}})
}

func TestMCPFiles(t *testing.T) {
	e := newMCPEnv(t)
	dir := t.TempDir()
	var w writeFileOut
	e.mustCall("write_file", map[string]any{"vm": "dev", "path": dir + "/sub/dir/notes.txt", "content": "héllo\n", "mode": "0640"}, &w)
	if w.BytesWritten != 7 || w.Size != 7 || w.Path != dir+"/sub/dir/notes.txt" {
		t.Errorf("write_file: %+v", w)
	}
	if fi, err := os.Stat(w.Path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("written file: %v %v", fi, err)
	}
	e.mustCall("write_file", map[string]any{"vm": "dev", "path": w.Path, "content": "more\n", "append": true}, &w)
	var r readFileOut
	e.mustCall("read_file", map[string]any{"vm": "dev", "path": w.Path}, &r)
	if r.Content != "héllo\nmore\n" || r.Binary || r.Truncated || r.Size != 12 {
		t.Errorf("read_file: %+v", r)
	}
	// Read in parts: a cut in the middle of "é" leaves it to the next part.
	r = readFileOut{}
	e.mustCall("read_file", map[string]any{"vm": "dev", "path": w.Path, "max_bytes": 2}, &r)
	if r.Content != "h" || r.BytesRead != 1 || !r.Truncated || r.Binary {
		t.Errorf("read_file part 1: %+v", r)
	}
	r = readFileOut{}
	e.mustCall("read_file", map[string]any{"vm": "dev", "path": w.Path, "offset": 1, "max_bytes": 4}, &r)
	if r.Content != "éll" || r.BytesRead != 4 || !r.Truncated {
		t.Errorf("read_file part 2: %+v", r)
	}
	// Binary comes back as base64.
	bin := []byte{0x7f, 'E', 'L', 'F', 0, 1, 2, 0xff}
	e.mustCall("write_file", map[string]any{"vm": "dev", "path": dir + "/bin", "content_base64": base64.StdEncoding.EncodeToString(bin)}, &w)
	r = readFileOut{}
	e.mustCall("read_file", map[string]any{"vm": "dev", "path": dir + "/bin"}, &r)
	if got, _ := base64.StdEncoding.DecodeString(r.ContentBase64); !r.Binary || string(got) != string(bin) || r.Content != "" {
		t.Errorf("read_file binary: %+v", r)
	}
	os.Symlink("notes.txt", filepath.Join(dir, "sub", "dir", "link"))
	var l listDirOut
	e.mustCall("list_dir", map[string]any{"vm": "dev", "path": dir, "depth": 3}, &l)
	var got []string
	for _, en := range l.Entries {
		got = append(got, en.Name+" "+en.Type+" "+en.Target)
	}
	want := []string{"bin file ", "sub dir ", "sub/dir dir ", "sub/dir/link symlink notes.txt", "sub/dir/notes.txt file "}
	if !reflect.DeepEqual(got, want) || l.Truncated {
		t.Errorf("list_dir: %q (truncated %v); want %q", got, l.Truncated, want)
	}
	e.mustCall("list_dir", map[string]any{"vm": "dev", "path": dir, "depth": 3, "max_entries": 2}, &l)
	if len(l.Entries) != 2 || !l.Truncated {
		t.Errorf("list_dir capped: %+v", l)
	}

	e.refuses("is a directory (use list_dir)", "read_file", map[string]any{"vm": "dev", "path": dir})
	e.refuses("no such file", "read_file", map[string]any{"vm": "dev", "path": dir + "/missing"})
	e.refuses("is not a regular file", "read_file", map[string]any{"vm": "dev", "path": "/dev/null"})
	e.refuses("is not a directory (use read_file)", "list_dir", map[string]any{"vm": "dev", "path": dir + "/bin"})
	e.refuses("give the file's content", "write_file", map[string]any{"vm": "dev", "path": dir + "/x"})
	e.refuses("not both", "write_file", map[string]any{"vm": "dev", "path": dir + "/x", "content": "a", "content_base64": "YQ=="})
	e.refuses("content_base64", "write_file", map[string]any{"vm": "dev", "path": dir + "/x", "content_base64": "%%%"})
	e.refuses("mode", "write_file", map[string]any{"vm": "dev", "path": dir + "/x", "content": "", "mode": "rwxr-xr-x"})
	e.refuses("is a directory", "write_file", map[string]any{"vm": "dev", "path": dir + "/sub", "content": ""})
	// A path with shell in it is a path.
	e.mustCall("write_file", map[string]any{"vm": "dev", "path": dir + "/$(touch pwned)'; touch pwned2", "content": "x"}, &w)
	if _, err := os.Stat(filepath.Join(dir, "$(touch pwned)'; touch pwned2")); err != nil {
		t.Errorf("file with a hostile name: %v", err)
	}
	for _, p := range []string{"pwned", "pwned2"} {
		if _, err := os.Stat(p); err == nil {
			os.Remove(p)
			t.Errorf("a path ran as shell: %s exists", p)
		}
	}
}

func TestMCPWorkspaceGit(t *testing.T) {
	e := newMCPEnv(t)
	e.b.gitText = strings.Repeat("+line\n", 1000)
	var out wsGitOut
	e.mustCall("workspace_diff", map[string]any{"vm": "dev", "max_bytes": 1024}, &out)
	if !out.Truncated || out.Bytes != 6000 || !strings.HasPrefix(out.Text, "+line\n") {
		t.Errorf("workspace_diff: %+v", out)
	}
	e.refuses("ENOTFOUND", "workspace_log", map[string]any{"vm": "ghost"})
	e.refuses("is not in a git repository", "workspace_prepare", map[string]any{"vm": "dev", "path": t.TempDir()})
	e.refuses("mode", "workspace_prepare", map[string]any{"vm": "dev", "mode": "everything"})
}

// TestMCPPanicIsAToolError: a panic in a tool is that call's error, and
// the server answers the next call.
func TestMCPPanicIsAToolError(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "t", Version: "1"}, nil)
	addTool(srv, &mcp.Tool{Name: "boom", Description: "panics"}, nil, func(_ context.Context, _ *mcp.CallToolRequest, in vmRefIn) (vmRmOut, error) {
		if in.Name == "boom" {
			panic("kaboom")
		}
		return vmRmOut{Removed: in.Name}, nil
	})
	st, ct := mcp.NewInMemoryTransports()
	ctx := context.Background()
	ss, err := srv.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "boom", Arguments: map[string]any{"name": "boom"}})
	if err != nil || !res.IsError || !strings.Contains(res.Content[0].(*mcp.TextContent).Text, "internal error in boom") {
		t.Fatalf("panicking call: %+v, %v", res, err)
	}
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "boom", Arguments: map[string]any{"name": "fine"}})
	if err != nil || res.IsError {
		t.Fatalf("next call: %+v, %v", res, err)
	}
}
