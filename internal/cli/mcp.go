package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"banger/internal/api"
	"banger/internal/buildinfo"
	"banger/internal/guest"
	"banger/internal/hostexec"
	"banger/internal/model"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
)

// `banger mcp` serves banger's operations as MCP tools on stdio, for AI
// agents. It is the CLI in another form: it runs as the user who started
// it, talks to bangerd through the same client, reads repositories with
// the user's rights through the same workspace flows, and reaches guests
// through the daemon's connect stream with the user's banger key. The
// tools live in mcp_vm.go, mcp_guest.go and mcp_workspace.go.

// mcpInstructions is what the server tells the agent about itself.
const mcpInstructions = `banger gives you disposable Linux VMs (Debian; you are root; /root is a persistent work disk). A session: vm_create {"name": "dev"} boots one (tens of seconds); exec runs commands in it (argv, or a shell line in "command"; the working directory defaults to /root); read_file, write_file and list_dir handle files; workspace_prepare copies a git repository of the host into the VM on a work branch; commit there with exec (git -C <guest_path> commit ...); workspace_diff and workspace_log show the guest's work; workspace_fetch brings it back into the host repository as refs/remotes/banger-<vm>/<branch> (the user's branches are never touched); vm_suspend saves a VM you will come back to (vm_start or any exec resumes it, processes included); vm_fork makes running copies of a VM to try several approaches at once, each with its own work branch; vm_rm {"name": "dev", "force": true} throws the VM away. Errors come back as tool errors with banger's message, which says what to do.`

// mcpServer holds what the tools share.
type mcpServer struct {
	app    *App
	client *api.Client
	// run runs host commands (git, for workspaces) as the user.
	run hostexec.Runner

	signerOnce sync.Once
	signer     ssh.Signer
	signerErr  error
}

// newMCPServer returns the MCP server with every tool.
func newMCPServer(a *App, run hostexec.Runner) *mcp.Server {
	s := &mcpServer{app: a, client: a.api(), run: run}
	srv := mcp.NewServer(&mcp.Implementation{Name: "banger", Title: "banger", Version: buildinfo.Version}, &mcp.ServerOptions{Instructions: mcpInstructions})
	s.addVMTools(srv)
	s.addGuestTools(srv)
	s.addWorkspaceTools(srv)
	return srv
}

func (a *App) mcpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "mcp",
		Short: "Serve banger's tools to an AI agent (Model Context Protocol on stdio)",
		Long: `Serve banger to an AI agent as an MCP server on standard input and output.

The agent gets tools to create, list, inspect, start, stop, suspend and remove VMs; to
run commands in them (exec) and read, write and list their files; and to carry
a git repository into a VM and the work done there back (workspace_prepare,
workspace_diff, workspace_log, workspace_fetch). Everything runs with your
rights, through bangerd, exactly as the banger commands do; relative host
paths are relative to the directory the server was started in.

Add it to an MCP client's configuration, for instance:

  {"mcpServers": {"banger": {"command": "banger", "args": ["mcp"]}}}`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv := newMCPServer(a, hostexec.Real{})
			err := srv.Run(cmd.Context(), mcpTransport(a.Stdin, a.Stdout))
			if err == nil || errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || errors.Is(err, mcp.ErrConnectionClosed) {
				return nil
			}
			return err
		},
	}
}

// mcpTransport is the JSON-RPC stream on the app's stdin and stdout.
func mcpTransport(in io.Reader, out io.Writer) mcp.Transport {
	rc, ok := in.(io.ReadCloser)
	if !ok {
		rc = io.NopCloser(in)
	}
	wc, ok := out.(io.WriteCloser)
	if !ok {
		wc = nopWriteCloser{out}
	}
	return &mcp.IOTransport{Reader: rc, Writer: wc}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// addTool registers a tool whose input schema is inferred from In (field
// descriptions from `jsonschema` tags) and then adjusted by schema
// (enums, bounds, defaults). The handler's error becomes a tool error
// carrying banger's message; a panic in it becomes one too, so one bad
// call never takes the server down.
func addTool[In, Out any](srv *mcp.Server, t *mcp.Tool, schema func(*jsonschema.Schema), h func(context.Context, *mcp.CallToolRequest, In) (Out, error)) {
	in, err := jsonschema.For[In](nil)
	if err != nil {
		panic(fmt.Sprintf("tool %s: input schema: %v", t.Name, err))
	}
	if schema != nil {
		schema(in)
	}
	t.InputSchema = in
	mcp.AddTool(srv, t, func(ctx context.Context, req *mcp.CallToolRequest, args In) (_ *mcp.CallToolResult, out Out, err error) {
		defer func() {
			if v := recover(); v != nil {
				var zero Out
				out, err = zero, fmt.Errorf("internal error in %s (a bug in banger; please report it): %v", t.Name, v)
			}
		}()
		out, err = h(ctx, req, args)
		if err != nil {
			return nil, out, toolError(err)
		}
		return nil, out, nil
	})
}

// toolError is the message an agent sees: banger's own, with its code in
// front when it has one ("ENOTFOUND: vm \"x\" not found").
func toolError(err error) error {
	msg := err.Error()
	var ue *usageError
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %s", model.EINVALID, msg)
	}
	var me *model.Error
	if errors.As(err, &me) {
		return fmt.Errorf("%s: %s", me.Code, msg)
	}
	return errors.New(msg)
}

// prop returns the schema of property name, which must exist.
func prop(s *jsonschema.Schema, name string) *jsonschema.Schema {
	p, ok := s.Properties[name]
	if !ok {
		panic("no property " + name)
	}
	return p
}

// bounds sets a numeric property's range and default.
func bounds(s *jsonschema.Schema, name string, lo, hi, def float64) {
	p := prop(s, name)
	p.Minimum, p.Maximum = &lo, &hi
	if def != 0 {
		p.Default = json.RawMessage(fmt.Sprint(def))
	}
}

// enum limits a string property to values, with def as its default
// ("" for none).
func enum(s *jsonschema.Schema, name, def string, values ...string) {
	p := prop(s, name)
	for _, v := range values {
		p.Enum = append(p.Enum, v)
	}
	if def != "" {
		p.Default, _ = json.Marshal(def)
	}
}

// progress reports a long operation's steps to the agent as MCP progress
// notifications, when it asked for them (a progress token in the call).
type progress struct {
	ctx   context.Context
	ss    *mcp.ServerSession
	token any
	mu    sync.Mutex
	n     float64
	buf   bytes.Buffer
}

func newProgress(ctx context.Context, req *mcp.CallToolRequest) *progress {
	p := &progress{ctx: ctx}
	if req != nil && req.Params != nil {
		p.ss, p.token = req.Session, req.Params.GetProgressToken()
	}
	return p
}

// note sends one message.
func (p *progress) note(msg string) {
	if p.ss == nil || p.token == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	// A client that went away is no reason to fail the operation.
	_ = p.ss.NotifyProgress(p.ctx, &mcp.ProgressNotificationParams{ProgressToken: p.token, Progress: p.n, Message: msg})
}

// event reports a daemon progress event.
func (p *progress) event(ev api.Event) {
	if ev.Progress == nil {
		return
	}
	msg := ev.Progress.Step
	if ev.Progress.Message != "" {
		msg += ": " + ev.Progress.Message
	}
	if ev.Progress.Warning {
		msg = "warning: " + msg
	}
	p.note(msg)
}

// Write takes the lines the CLI's flows print and reports each.
func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	p.buf.Write(b)
	var lines []string
	for {
		line, err := p.buf.ReadString('\n')
		if err != nil {
			p.buf.WriteString(line)
			break
		}
		if l := strings.TrimSpace(line); l != "" {
			lines = append(lines, l)
		}
	}
	p.mu.Unlock()
	for _, l := range lines {
		p.note(l)
	}
	return len(b), nil
}

// userSigner is the user's banger key, which banger authorizes in every
// VM the user creates.
func (s *mcpServer) userSigner() (ssh.Signer, error) {
	s.signerOnce.Do(func() {
		path, err := s.app.bangerKey()
		if err != nil {
			s.signerErr = err
			return
		}
		s.signer, s.signerErr = guest.LoadSigner(path)
	})
	return s.signer, s.signerErr
}

// dialGuest opens an SSH connection to a VM as root, through the daemon's
// connect stream (so it works whatever network namespace the daemon runs
// in), authenticated with the user's banger key, accepting only the host
// key the daemon made for the VM.
func (s *mcpServer) dialGuest(ctx context.Context, ref string) (*guest.Conn, api.VMView, error) {
	vm, err := s.client.GetVM(ctx, ref)
	if err != nil {
		return nil, vm, err
	}
	signer, err := s.userSigner()
	if err != nil {
		return nil, vm, fmt.Errorf("your banger key: %w", err)
	}
	// The daemon refuses a VM that is not running, saying what to do.
	raw, err := s.client.Connect(ctx, vm.Name, 22)
	if err != nil {
		return nil, vm, err
	}
	conn, err := guest.DialConn(ctx, raw, vm.Name, signer, vm.Runtime.SSHHostKey)
	if err != nil {
		if errors.Is(err, guest.ErrNoHostKey) {
			return nil, vm, model.Errorf(model.ECONFLICT, "vm %s has no recorded SSH host key yet; start it (vm_start) and retry", vm.Name)
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, vm, model.Errorf(model.EFORBIDDEN, "vm %s does not accept your banger key (~/.config/banger/ssh/id_ed25519.pub): it is authorized in the VMs you create; add it to the guest's /root/.ssh/authorized_keys to use this one", vm.Name)
		}
		return nil, vm, fmt.Errorf("ssh to vm %s: %w", vm.Name, err)
	}
	return conn, vm, nil
}
