package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/testutil"
	"banger/test/harness"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// agent is an MCP client session with `banger mcp` run as an
// unprivileged user, the way an agent's MCP client runs it.
type agent struct {
	t  *testing.T
	cs *mcp.ClientSession

	mu       sync.Mutex
	progress []string
}

// call calls a tool with a progress token. It returns the structured
// content decoded into out, or the text of a tool error.
func (a *agent) call(name string, args map[string]any, out any) string {
	a.t.Helper()
	params := &mcp.CallToolParams{Name: name, Arguments: args}
	params.SetProgressToken(name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := a.cs.CallTool(ctx, params)
	if err != nil {
		a.t.Fatalf("%s: the server failed instead of answering with a tool error: %v", name, err)
	}
	if res.IsError {
		var b strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				b.WriteString(tc.Text)
			}
		}
		return "error: " + b.String()
	}
	if out != nil {
		raw, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(raw, out); err != nil {
			a.t.Fatalf("%s: %s: %v", name, raw, err)
		}
	}
	return ""
}

func (a *agent) must(name string, args map[string]any, out any) {
	a.t.Helper()
	if msg := a.call(name, args, out); msg != "" {
		a.t.Fatalf("%s %v: %s", name, args, msg)
	}
}

func (a *agent) refuses(want, name string, args map[string]any) {
	a.t.Helper()
	if msg := a.call(name, args, nil); !strings.HasPrefix(msg, "error: ") || !strings.Contains(msg, want) {
		a.t.Errorf("%s %v: want a tool error saying %q, got %q", name, args, want, msg)
	}
}

// guestHTTP is a web server for the guest in Perl (perl-base is in every
// Debian image): one process per connection, answering "guest says PATH".
const guestHTTP = `use IO::Socket::INET;
$SIG{CHLD} = "IGNORE";
my $s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => 8080, Listen => 128, ReuseAddr => 1) or die "listen: $!";
while (1) {
	my $c = $s->accept or next;
	if (fork() == 0) {
		my $l = <$c>;
		my ($p) = $l =~ m{^GET (\S+)};
		while (my $h = <$c>) { last if $h =~ /^\r?\n$/ }
		my $b = "guest says $p";
		print $c "HTTP/1.0 200 OK\r\nContent-Length: " . length($b) . "\r\nConnection: close\r\n\r\n$b";
		close $c;
		exit 0;
	}
	close $c;
}
`

// TestAgentSession is issue M's end-to-end test: a real MCP client (the
// Go SDK's) drives `banger mcp`, run as an unprivileged user against a
// daemon in its own network namespace, through a whole agent session:
// list the tools, create a VM, run commands, write and read files,
// prepare a workspace from the user's repository, commit in the guest
// through exec, fetch the commit back, and remove the VM; bad arguments
// come back as tool errors. On the same VM, suspended through vm_suspend
// with a web server running, `banger port-forward` (run by the same user
// in the host's namespace) resumes the VM, carries HTTP requests, many at
// once, to the server, and ends when the VM stops.
func TestAgentSession(t *testing.T) {
	a := harness.RequireArtifacts(t)
	testutil.RequireTools(t, "git")
	base, err := os.MkdirTemp("/tmp", "bgag-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	home := filepath.Join(base, "home")
	repo := filepath.Join(home, "proj")
	e := &wsEnv{t: t, home: home, repo: repo, user: &harness.User{UID: nobody, GID: nobody, Home: home}}
	e.sh(base, "mkdir -p home/proj && cd home/proj && git init -q -b main && git config user.name 'Agent User' && git config user.email agent@example.com && echo hello > README && git add README && git commit -qm initial")
	e.sh(base, fmt.Sprintf("chown -R %d:%d home", nobody, nobody))
	d := harness.NewE2EDaemon(t, a, `socket_group = "nogroup"`)
	e.d = d

	// The MCP server, as an agent's client starts it: `banger mcp` on
	// stdio, as the user, in the user's home.
	cmd := exec.Command(filepath.Join(d.Bin, "banger"), "mcp")
	cmd.Env = append(os.Environ(), "BANGER_SOCKET="+d.Socket, "HOME="+home, "PATH="+d.Bin+":"+os.Getenv("PATH"))
	cmd.Dir = home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var serverErr strings.Builder
	cmd.Stderr = &serverErr
	ag := &agent{t: t}
	client := mcp.NewClient(&mcp.Implementation{Name: "e2e-agent", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			ag.mu.Lock()
			defer ag.mu.Unlock()
			ag.progress = append(ag.progress, fmt.Sprintf("%v: %s", req.Params.ProgressToken, req.Params.Message))
		},
	})
	cs, err := client.Connect(context.Background(), &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect to banger mcp: %v\n%s", err, serverErr.String())
	}
	ag.cs = cs
	defer func() {
		cs.Close()
		if t.Failed() {
			t.Logf("banger mcp's stderr:\n%s", serverErr.String())
		}
	}()

	tools, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, tool := range tools.Tools {
		have[tool.Name] = true
	}
	for _, name := range []string{"vm_create", "vm_list", "vm_inspect", "vm_start", "vm_stop", "vm_suspend", "vm_rm", "exec", "read_file", "write_file", "list_dir", "workspace_prepare", "workspace_diff", "workspace_log", "workspace_fetch"} {
		if !have[name] {
			t.Errorf("tools/list lacks %s", name)
		}
	}

	// Bad arguments are tool errors, and the server goes on.
	ag.refuses("DNS label", "vm_create", map[string]any{"name": "Bad_Name"})
	ag.refuses("memory", "vm_create", map[string]any{"name": "x", "memory": "a lot"})
	ag.refuses("ENOTFOUND", "exec", map[string]any{"vm": "ghost", "argv": []string{"true"}})
	ag.refuses("vm", "exec", map[string]any{"argv": []string{"true"}})

	var created struct {
		VM struct{ Name, State, GuestIP string } `json:"vm"`
	}
	ag.must("vm_create", map[string]any{"name": "agent", "vcpus": 1, "memory": "512M", "disk_size": "2G", "overlay_size": "2G"}, &created)
	if created.VM.State != "running" {
		t.Fatalf("vm_create: %+v", created)
	}
	// Notifications are handled apart from results: they may come a
	// moment later.
	harness.WaitFor(t, 10*time.Second, "vm_create's progress to report the ready step", func() bool {
		ag.mu.Lock()
		defer ag.mu.Unlock()
		return strings.Contains(strings.Join(ag.progress, "\n"), "vm_create: ready")
	})
	if v := d.VM(t, "agent"); v.OwnerUID != nobody {
		t.Errorf("the VM belongs to uid %d, not the user who ran banger mcp", v.OwnerUID)
	}

	type execOut struct {
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
	}
	var x execOut
	ag.must("exec", map[string]any{"vm": "agent", "argv": []string{"sh", "-c", "hostname; echo $GREETING; cat; pwd; echo oops >&2; exit 5"}, "env": map[string]string{"GREETING": "hi there"}, "stdin": "piped\n"}, &x)
	if x.ExitCode != 5 || x.Stdout != "agent\nhi there\npiped\n/root\n" || x.Stderr != "oops\n" {
		t.Errorf("exec: %+v", x)
	}

	var w struct {
		Path string `json:"path"`
	}
	ag.must("write_file", map[string]any{"vm": "agent", "path": "notes/hello.txt", "content": "written by the agent\n"}, &w)
	if w.Path != "/root/notes/hello.txt" {
		t.Errorf("write_file: %+v", w)
	}
	var r struct {
		Content string `json:"content"`
		Binary  bool   `json:"binary"`
	}
	ag.must("read_file", map[string]any{"vm": "agent", "path": "/root/notes/hello.txt"}, &r)
	if r.Content != "written by the agent\n" || r.Binary {
		t.Errorf("read_file: %+v", r)
	}
	var l struct {
		Entries []struct{ Name, Type string } `json:"entries"`
	}
	ag.must("list_dir", map[string]any{"vm": "agent", "path": "notes"}, &l)
	if len(l.Entries) != 1 || l.Entries[0].Name != "hello.txt" || l.Entries[0].Type != "file" {
		t.Errorf("list_dir: %+v", l)
	}

	// The workspace: the user's repository in, a commit in the guest, the
	// commit back out.
	var ws struct {
		Workspace struct {
			GuestPath  string `json:"guest_path"`
			BranchName string `json:"branch_name"`
		} `json:"workspace"`
	}
	ag.must("workspace_prepare", map[string]any{"vm": "agent", "path": "proj"}, &ws)
	if ws.Workspace.GuestPath != "/root/proj" || ws.Workspace.BranchName != "banger/agent" {
		t.Fatalf("workspace_prepare: %+v", ws)
	}
	ag.must("exec", map[string]any{"vm": "agent", "cwd": "proj", "command": "echo 'made in the guest' >> README && git commit -qam 'agent: extend README' && git log --format=%an -1"}, &x)
	if x.ExitCode != 0 || x.Stdout != "Agent User\n" {
		t.Fatalf("commit in the guest: %+v", x)
	}
	var gitOut struct {
		Text string `json:"text"`
	}
	ag.must("workspace_log", map[string]any{"vm": "agent", "oneline": true}, &gitOut)
	if !strings.Contains(gitOut.Text, "agent: extend README") {
		t.Errorf("workspace_log: %q", gitOut.Text)
	}
	ag.must("workspace_diff", map[string]any{"vm": "agent"}, &gitOut)
	if !strings.Contains(gitOut.Text, "+made in the guest") {
		t.Errorf("workspace_diff: %q", gitOut.Text)
	}
	var fetched struct {
		Fetched []struct {
			Commits int `json:"commits"`
		} `json:"fetched"`
	}
	ag.must("workspace_fetch", map[string]any{"vm": "agent"}, &fetched)
	if len(fetched.Fetched) != 1 || fetched.Fetched[0].Commits != 1 {
		t.Errorf("workspace_fetch: %+v", fetched)
	}
	if got := e.git(repo, "log", "--format=%s", "-1", "refs/remotes/banger-agent/banger/agent"); got != "agent: extend README\n" {
		t.Errorf("the fetched commit on the host: %q", got)
	}
	if got := e.git(repo, "rev-parse", "--abbrev-ref", "HEAD"); got != "main\n" {
		t.Errorf("the user's HEAD moved: %q", got)
	}

	t.Run("port-forward", func(t *testing.T) {
		ag.t = t
		ag.must("write_file", map[string]any{"vm": "agent", "path": "serve.pl", "content": guestHTTP}, nil)
		ag.must("exec", map[string]any{"vm": "agent", "command": "setsid perl /root/serve.pl >/root/serve.log 2>&1 </dev/null & sleep 1; cat /root/serve.log"}, &x)
		// Suspended with the server running: the forward resumes the VM,
		// and the server answers as if nothing happened.
		var suspended struct {
			VM struct{ State string } `json:"vm"`
		}
		ag.must("vm_suspend", map[string]any{"name": "agent"}, &suspended)
		if suspended.VM.State != "suspended" {
			t.Fatalf("vm_suspend: %+v", suspended)
		}
		// The forward runs as the user, in the host's network namespace:
		// the guest is reachable only through the daemon's socket.
		pf := exec.Command(filepath.Join(d.Bin, "banger"), "port-forward", "agent", ":8080", "--json")
		pf.Env = append(os.Environ(), "BANGER_SOCKET="+d.Socket, "HOME="+home)
		pf.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		var pfErr strings.Builder
		pf.Stderr = &pfErr
		stdout, _ := pf.StdoutPipe()
		if err := pf.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- pf.Wait() }()
		defer func() {
			pf.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				pf.Process.Kill()
			}
		}()
		var bound struct {
			Forwards []struct {
				Local      string `json:"local"`
				RemotePort int    `json:"remote_port"`
			} `json:"forwards"`
		}
		if err := json.NewDecoder(bufio.NewReader(stdout)).Decode(&bound); err != nil || len(bound.Forwards) != 1 {
			t.Fatalf("port-forward --json: %v %+v\n%s", err, bound, pfErr.String())
		}
		addr := bound.Forwards[0].Local
		if d.Netns == "" {
			t.Fatal("the daemon must run in a network namespace of its own for this test")
		}
		get := func(path string) (string, error) {
			c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := c.Get("http://" + addr + path)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return string(b), err
		}
		// The server may take a moment to listen.
		var body string
		for i := 0; i < 20; i++ {
			if body, err = get("/first"); err == nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if body != "guest says /first" {
			t.Fatalf("GET through the forward: %q, %v\nport-forward: %s", body, err, pfErr.String())
		}
		// Many connections at once.
		const n = 24
		var wg sync.WaitGroup
		errs := make(chan string, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				want := fmt.Sprintf("guest says /req%d", i)
				if got, err := get(fmt.Sprintf("/req%d", i)); err != nil || got != want {
					errs <- fmt.Sprintf("request %d: %q, %v", i, got, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
		// Stopping the VM ends the forward, with an error that says so.
		var stopped struct {
			VM struct{ State string } `json:"vm"`
		}
		ag.must("vm_stop", map[string]any{"name": "agent"}, &stopped)
		select {
		case err := <-exited:
			if err == nil || !strings.Contains(pfErr.String(), "no longer running") {
				t.Errorf("port-forward after vm stop: %v, %q", err, pfErr.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("port-forward still runs after the VM stopped")
		}
	})
	ag.t = t

	// The VM goes; nothing is left.
	ag.must("vm_rm", map[string]any{"name": "agent", "force": true}, nil)
	var list struct {
		VMs []struct{ Name string } `json:"vms"`
	}
	ag.must("vm_list", nil, &list)
	if len(list.VMs) != 0 {
		t.Errorf("vm_list after vm_rm: %+v", list)
	}
	if lo := d.Leftovers(t, 2); len(lo) > 0 {
		t.Errorf("leftovers: %v", lo)
	}
}
