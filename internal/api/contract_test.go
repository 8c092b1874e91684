package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/model"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// The contract test holds openapi.json to the code, three ways:
//
//   - every route the server registers (found in this package's source,
//     whichever file adds it) is an operation of the document, and every
//     operation is a route;
//   - every request the Go client sends, and every answer the server gives
//     it (successes with every field of every result filled in, and the
//     errors each operation documents), is valid against the document,
//     streamed events and upgraded streams included;
//   - every exported Client method is exercised, so a new one cannot
//     escape.
//
// A route, a field or an error another change adds without documenting
// it fails here, saying what to add.

func loadOpenAPI(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openAPIDoc)
	if err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI 3 document: %v", err)
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return doc, router
}

// sourceRoutes returns "METHOD /v1/path" of every mux.HandleFunc and
// mux.Handle call in this package's non-test files, evaluating the
// pattern from string literals and the Prefix (or its alias p).
func sourceRoutes(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "HandleFunc" && sel.Sel.Name != "Handle") || len(call.Args) == 0 {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); !ok || id.Name != "mux" {
				return true
			}
			pat, err := evalPattern(call.Args[0])
			if err != nil {
				t.Errorf("%s: a route pattern the contract test cannot read: %v", fset.Position(call.Pos()), err)
				return true
			}
			if pat == "/" {
				return true // the catch-all: "no route" errors
			}
			out = append(out, pat)
			return true
		})
	}
	sort.Strings(out)
	return out
}

func evalPattern(e ast.Expr) (string, error) {
	switch e := e.(type) {
	case *ast.BasicLit:
		return strconv.Unquote(e.Value)
	case *ast.Ident:
		if e.Name == "p" || e.Name == "Prefix" {
			return Prefix, nil
		}
	case *ast.BinaryExpr:
		if e.Op == token.ADD {
			a, err := evalPattern(e.X)
			if err != nil {
				return "", err
			}
			b, err := evalPattern(e.Y)
			return a + b, err
		}
	case *ast.ParenExpr:
		return evalPattern(e.X)
	}
	return "", fmt.Errorf("%T is not a string literal, p or Prefix", e)
}

func docOperations(doc *openapi3.T) []string {
	var out []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+path)
		}
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIRoutes: the document and the server's routes list the same
// operations.
func TestOpenAPIRoutes(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	routes := sourceRoutes(t)
	if len(routes) < 30 {
		t.Fatalf("found only %d routes in the source: is the scan broken?", len(routes))
	}
	inDoc := map[string]bool{}
	for _, o := range docOperations(doc) {
		inDoc[o] = true
	}
	inSrc := map[string]bool{}
	for _, r := range routes {
		inSrc[r] = true
		if !inDoc[r] {
			t.Errorf("route %s is served but internal/api/openapi.json does not describe it: add the operation (parameters, body, responses, error codes)", r)
		}
	}
	for o := range inDoc {
		if !inSrc[o] {
			t.Errorf("openapi.json describes %s, which the server does not serve: remove it or register the route", o)
		}
	}
}

// TestOpenAPIServed: the daemon serves the document it embeds.
func TestOpenAPIServed(t *testing.T) {
	c := serveTest(t, &contractBackend{})
	got, err := c.OpenAPI(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	json.Unmarshal(got, &a)
	json.Unmarshal(openAPIDoc, &b)
	if !reflect.DeepEqual(a, b) {
		t.Error("GET /v1/openapi.json differs from the embedded document")
	}
}

// exchange is one request as the server saw it and its answer.
type exchange struct {
	method, target string
	header         http.Header
	body           []byte
	status         int
	respHeader     http.Header
	respBody       []byte
	// stream is what the server wrote on an upgraded connection after
	// the 101 answer.
	stream []byte
}

// recorder records every exchange of a handler.
type recorder struct {
	mu  sync.Mutex
	all []*exchange
	// busy counts handlers still running (streams the client closed
	// may take a moment to end on the server).
	busy sync.WaitGroup
}

func (rec *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.busy.Add(1)
		defer rec.busy.Done()
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		ex := &exchange{method: r.Method, target: r.URL.RequestURI(), header: r.Header.Clone(), body: body}
		rw := &recordWriter{w: w, ex: ex}
		next.ServeHTTP(rw, r)
		if rw.tee != nil {
			rw.tee.mu.Lock()
			raw := rw.tee.buf.Bytes()
			rw.tee.mu.Unlock()
			head, rest, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
			if resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(append(head, "\r\n\r\n"...))), nil); err == nil {
				ex.status, ex.respHeader = resp.StatusCode, resp.Header
			}
			ex.stream = rest
		}
		rec.mu.Lock()
		rec.all = append(rec.all, ex)
		rec.mu.Unlock()
	})
}

// take returns the exchanges so far, once every handler has ended.
func (rec *recorder) take() []*exchange {
	rec.busy.Wait()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	out := rec.all
	rec.all = nil
	return out
}

type recordWriter struct {
	w   http.ResponseWriter
	ex  *exchange
	tee *teeConn
}

func (r *recordWriter) Header() http.Header { return r.w.Header() }
func (r *recordWriter) WriteHeader(s int) {
	if r.ex.status == 0 {
		r.ex.status = s
		r.ex.respHeader = r.w.Header().Clone()
	}
	r.w.WriteHeader(s)
}
func (r *recordWriter) Write(b []byte) (int, error) {
	if r.ex.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	r.ex.respBody = append(r.ex.respBody, b...)
	return r.w.Write(b)
}
func (r *recordWriter) Flush() {
	if f, ok := r.w.(http.Flusher); ok {
		f.Flush()
	}
}
func (r *recordWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := r.w.(http.Hijacker).Hijack()
	if err != nil {
		return nil, nil, err
	}
	r.tee = &teeConn{Conn: conn}
	return r.tee, bufio.NewReadWriter(rw.Reader, bufio.NewWriter(r.tee)), nil
}

// teeConn keeps a copy of what the server writes on a hijacked
// connection.
type teeConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *teeConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *teeConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ndjson decodes an NDJSON body into the array of its lines.
func ndjson(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	var out []any
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var v any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return nil, fmt.Errorf("NDJSON line %q: %w", sc.Bytes(), err)
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

var registerNDJSON sync.Once

// contractChecker validates exchanges against the document.
type contractChecker struct {
	t      *testing.T
	doc    *openapi3.T
	router routers.Router
	// seen counts the statuses each operation answered with.
	seen map[string]map[int]bool
}

// check validates ex and returns the operation it was.
func (c *contractChecker) check(ex *exchange) *openapi3.Operation {
	c.t.Helper()
	req, err := http.NewRequest(ex.method, "http://bangerd"+ex.target, bytes.NewReader(ex.body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header = ex.header.Clone()
	name := ex.method + " " + req.URL.Path
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		c.t.Errorf("%s: not in openapi.json: %v", name, err)
		return nil
	}
	opKey := ex.method + " " + route.Path
	if c.seen[opKey] == nil {
		c.seen[opKey] = map[int]bool{}
	}
	c.seen[opKey][ex.status] = true
	ctx := context.Background()
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, RejectWhenRequestBodyNotSpecified: true}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
		c.t.Errorf("%s: the client's request does not match openapi.json: %v\nbody: %s", name, err, ex.body)
	}
	// The validator lets unknown query parameters through; the server
	// refuses some, and the document must name every one the client sends.
	for k := range req.URL.Query() {
		if route.Operation.Parameters.GetByInAndName("query", k) == nil {
			c.t.Errorf("%s: the client sends query parameter %q, which openapi.json does not describe", name, k)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: ex.status, Header: ex.respHeader, Options: opts}
	out.SetBodyBytes(ex.respBody)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		c.t.Errorf("%s: the server's %d answer does not match openapi.json: %v\nbody: %.2000s", name, ex.status, err, ex.respBody)
	}
	if ex.status == http.StatusSwitchingProtocols {
		c.checkStream(route.Operation, name, ex.stream)
	}
	return route.Operation
}

// checkStream validates what the daemon sent after switching protocols
// against the events schema x-banger-upgrade names, if any.
func (c *contractChecker) checkStream(op *openapi3.Operation, name string, stream []byte) {
	c.t.Helper()
	x, ok := op.Extensions["x-banger-upgrade"].(map[string]any)
	if !ok {
		c.t.Errorf("%s: switches protocols but openapi.json has no x-banger-upgrade saying what follows", name)
		return
	}
	ref, _ := x["daemon_events"].(string)
	if ref == "" {
		return
	}
	sref, ok := c.doc.Components.Schemas[strings.TrimPrefix(ref, "#/components/schemas/")]
	if !ok {
		c.t.Errorf("%s: x-banger-upgrade names %s, which is not a schema", name, ref)
		return
	}
	lines := bytes.Split(bytes.TrimSpace(stream), []byte("\n"))
	if len(lines) == 0 || len(lines[0]) == 0 {
		c.t.Errorf("%s: no events after switching protocols", name)
		return
	}
	for _, l := range lines {
		var v any
		if err := json.Unmarshal(l, &v); err != nil {
			c.t.Errorf("%s: event %q: %v", name, l, err)
			continue
		}
		if err := sref.Value.VisitJSON(v, openapi3.MultiErrors()); err != nil {
			c.t.Errorf("%s: event %s does not match %s: %v", name, l, ref, err)
		}
	}
}

// errorStatuses are the error statuses an operation documents.
func errorStatuses(op *openapi3.Operation) []int {
	var out []int
	for k := range op.Responses.Map() {
		if s, err := strconv.Atoi(k); err == nil && s >= 400 {
			out = append(out, s)
		}
	}
	sort.Ints(out)
	return out
}

// streamed says whether an operation answers with an NDJSON stream.
func streamed(op *openapi3.Operation) bool {
	r := op.Responses.Status(200)
	return r != nil && r.Value != nil && r.Value.Content.Get("application/x-ndjson") != nil
}

// clientCall is one use of a Client method.
type clientCall struct {
	method string
	call   func(ctx context.Context, c *Client) error
}

// TestOpenAPIContract drives every Client method against a server whose
// backend fills in every field of every answer, then fails with each
// error the operation documents; every exchange is validated against the
// document.
func TestOpenAPIContract(t *testing.T) {
	registerNDJSON.Do(func() { openapi3filter.RegisterBodyDecoder("application/x-ndjson", ndjson) })
	doc, router := loadOpenAPI(t)
	b := &contractBackend{doc: doc, t: t}
	rec := &recorder{}
	sock := filepath.Join(t.TempDir(), "api.sock")
	s := NewServer(b, slog.New(slog.DiscardHandler))
	s.http.Handler = rec.wrap(s.Handler())
	if err := s.Listen(sock, ""); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	c := NewClient(sock)
	checker := &contractChecker{t: t, doc: doc, router: router, seen: map[string]map[int]bool{}}
	file := func() *os.File {
		f, err := os.CreateTemp(t.TempDir(), "part")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("kernel bytes")
		t.Cleanup(func() { f.Close() })
		return f
	}
	payload := func(w io.Writer) error { _, err := io.WriteString(w, "a tar stream"); return err }
	progress := func(Event) {}
	calls := []clientCall{
		{"Version", func(ctx context.Context, c *Client) error { _, err := c.Version(ctx); return err }},
		{"Doctor", func(ctx context.Context, c *Client) error { _, err := c.Doctor(ctx); return err }},
		{"OpenAPI", func(ctx context.Context, c *Client) error { _, err := c.OpenAPI(ctx); return err }},
		{"ListImages", func(ctx context.Context, c *Client) error { _, err := c.ListImages(ctx); return err }},
		{"GetImage", func(ctx context.Context, c *Client) error { _, err := c.GetImage(ctx, "alice/base"); return err }},
		{"RegisterImage", func(ctx context.Context, c *Client) error {
			_, err := c.RegisterImage(ctx, ImageRegisterRequest{Name: "base", KernelPath: "/k", RootfsPath: "/r", InitrdPath: "/i", ModulesDir: "/m", WorkSeed: "/w", Docker: true})
			return err
		}},
		{"BuildImage", func(ctx context.Context, c *Client) error {
			_, err := c.BuildImage(ctx, ImageBuildRequest{Name: "base", Release: "bookworm", Mirror: "http://mirror.invalid/debian", Packages: []string{"vim"}, Docker: true, KernelPath: "/k", SizeBytes: 1 << 30}, progress)
			return err
		}},
		{"DeleteImage", func(ctx context.Context, c *Client) error { return c.DeleteImage(ctx, "base") }},
		{"WarmImage", func(ctx context.Context, c *Client) error {
			_, err := c.WarmImage(ctx, "alice/base", ImageWarmRequest{VCPUCount: 2, MemoryMiB: 512}, progress)
			return err
		}},
		{"DropWarm", func(ctx context.Context, c *Client) error { return c.DropWarm(ctx, "base") }},
		{"UploadImage", func(ctx context.Context, c *Client) error {
			_, err := c.UploadImage(ctx, ImageUploadRequest{Name: "up", Docker: true}, []UploadFile{{Role: RoleKernel, File: file()}, {Role: RoleRootfs, File: file()}}, progress)
			return err
		}},
		{"BuildImageUpload", func(ctx context.Context, c *Client) error {
			_, err := c.BuildImageUpload(ctx, ImageBuildRequest{Name: "b", Release: "bookworm", Packages: []string{"a", "b"}, Docker: true, SizeBytes: 4096}, file(), progress)
			return err
		}},
		{"ImportImage", func(ctx context.Context, c *Client) error {
			_, err := c.ImportImage(ctx, ImageImportRequest{Name: "oci", PlainHTTP: true, Dockerfile: "/src/Dockerfile", SizeBytes: 1 << 30}, []UploadFile{{Role: RoleArchive, File: file()}, {Role: RoleAuth, File: file()}}, progress)
			return err
		}},
		{"ListKernels", func(ctx context.Context, c *Client) error { _, err := c.ListKernels(ctx); return err }},
		{"BuildKernel", func(ctx context.Context, c *Client) error {
			_, err := c.BuildKernel(ctx, KernelBuildRequest{Version: "6.1", Force: true}, progress)
			return err
		}},
		{"ListVMs", func(ctx context.Context, c *Client) error { _, err := c.ListVMs(ctx); return err }},
		{"ListVMRows", func(ctx context.Context, c *Client) error { _, err := c.ListVMRows(ctx); return err }},
		{"GetVM", func(ctx context.Context, c *Client) error { _, err := c.GetVM(ctx, "dev"); return err }},
		{"CreateVM", func(ctx context.Context, c *Client) error {
			secs := int64(60)
			_, err := c.CreateVM(ctx, model.VMCreateRequest{Name: "dev", ImageName: "base", VCPUCount: 2, MemoryMiB: 1024, SystemOverlaySizeByte: 1 << 30, WorkDiskSizeBytes: 1 << 30,
				NATEnabled: true, NATSet: true, AutoStopAfterSeconds: &secs, SSHPublicKeys: []string{"ssh-ed25519 AAAA"}, Egress: &model.EgressPolicy{Mode: "allow", Allow: []string{"10.0.0.0/8"}}, IdleAction: model.IdleSuspend}, progress)
			return err
		}},
		{"SetVM", func(ctx context.Context, c *Client) error {
			n, yes, secs, idle := 2, true, int64(-1), model.IdleDefault
			size := int64(1 << 30)
			_, err := c.SetVM(ctx, model.VMSetRequest{IDOrName: "dev", VCPUCount: &n, MemoryMiB: &n, WorkDiskSizeBytes: &size, NATEnabled: &yes, AutoStopAfterSeconds: &secs, Egress: &model.EgressPolicy{Mode: "none"}, IdleAction: &idle})
			return err
		}},
		{"DeleteVM", func(ctx context.Context, c *Client) error {
			return c.DeleteVM(ctx, "dev", VMDeleteOptions{Force: true}, progress)
		}},
		{"StartVM", func(ctx context.Context, c *Client) error { _, err := c.StartVM(ctx, "dev", progress); return err }},
		{"StopVM", func(ctx context.Context, c *Client) error { _, err := c.StopVM(ctx, "dev", progress); return err }},
		{"KillVM", func(ctx context.Context, c *Client) error { _, err := c.KillVM(ctx, "dev"); return err }},
		{"SuspendVM", func(ctx context.Context, c *Client) error { _, err := c.SuspendVM(ctx, "dev", progress); return err }},
		{"ForkVM", func(ctx context.Context, c *Client) error {
			_, err := c.ForkVM(ctx, "dev", model.VMForkRequest{Names: []string{"a", "b"}, Count: 2}, progress)
			return err
		}},
		{"RestartVM", func(ctx context.Context, c *Client) error { _, err := c.RestartVM(ctx, "dev", progress); return err }},
		{"ResetSystem", func(ctx context.Context, c *Client) error { _, err := c.ResetSystem(ctx, "dev"); return err }},
		{"VMStats", func(ctx context.Context, c *Client) error { _, err := c.VMStats(ctx, "dev"); return err }},
		{"Logs", func(ctx context.Context, c *Client) error {
			return c.Logs(ctx, "dev", LogsOptions{Tail: 10}, io.Discard)
		}},
		{"Connect", func(ctx context.Context, c *Client) error {
			conn, err := c.Connect(ctx, "dev", 8080)
			if err != nil {
				return err
			}
			defer conn.Close()
			io.WriteString(conn, "ping")
			buf := make([]byte, 4)
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
				return fmt.Errorf("connect echo: %q, %v", buf, err)
			}
			return nil
		}},
		{"Hold", func(ctx context.Context, c *Client) error {
			h, err := c.Hold(ctx, "dev")
			if err != nil {
				return err
			}
			return h.Close()
		}},
		{"ListWorkspaces", func(ctx context.Context, c *Client) error { _, err := c.ListWorkspaces(ctx); return err }},
		{"GetWorkspace", func(ctx context.Context, c *Client) error {
			_, err := c.GetWorkspace(ctx, "dev", "/root/proj")
			return err
		}},
		{"PrepareWorkspace", func(ctx context.Context, c *Client) error {
			_, err := c.PrepareWorkspace(ctx, "dev", WorkspacePrepareRequest{Mode: model.WorkspacePrepareModeFullCopy, Branch: "banger/dev", GuestPath: "/root/proj", SourcePath: "/src/proj",
				RepoRoot: "/src/proj", RepoName: "proj", HeadCommit: "abc", CurrentBranch: "main", UserName: "U", UserEmail: "u@example.com", Force: true}, payload, progress)
			return err
		}},
		{"CaptureWorkspace", func(ctx context.Context, c *Client) error {
			_, err := c.CaptureWorkspace(ctx, "dev", "/root/proj", progress)
			return err
		}},
		{"DownloadWorkspaceBundle", func(ctx context.Context, c *Client) error {
			_, err := c.DownloadWorkspaceBundle(ctx, "dev", "/root/proj", io.Discard)
			return err
		}},
		{"MarkWorkspaceFetched", func(ctx context.Context, c *Client) error {
			_, err := c.MarkWorkspaceFetched(ctx, "dev", WorkspaceFetchedRequest{GuestPath: "/root/proj", Head: "abc", WIP: "def"})
			return err
		}},
		{"WorkspaceGit", func(ctx context.Context, c *Client) error {
			return c.WorkspaceGit(ctx, "dev", WorkspaceGitRequest{Kind: "log", GuestPath: "/root/proj", Stat: true, Oneline: true, Color: true}, io.Discard)
		}},
		{"WorkspaceGit", func(ctx context.Context, c *Client) error {
			return c.WorkspaceGit(ctx, "dev", WorkspaceGitRequest{Kind: "diff", Stat: true}, io.Discard)
		}},
		{"FileSyncEntries", func(ctx context.Context, c *Client) error { _, err := c.FileSyncEntries(ctx); return err }},
		{"UploadFileSync", func(ctx context.Context, c *Client) error {
			_, err := c.UploadFileSync(ctx, "dev", payload)
			return err
		}},
	}

	// Every exported Client method is here (Socket asks nothing).
	have := map[string]bool{"Socket": true}
	for _, cc := range calls {
		have[cc.method] = true
	}
	ct := reflect.TypeOf(c)
	for i := range ct.NumMethod() {
		if m := ct.Method(i).Name; !have[m] {
			t.Errorf("Client.%s is not exercised by the contract test: add a call to TestOpenAPIContract (and its operation to openapi.json)", m)
		}
	}

	ctx := context.Background()
	for _, cc := range calls {
		b.setFail("")
		if err := cc.call(ctx, c); err != nil {
			t.Errorf("%s: %v", cc.method, err)
		}
		var op *openapi3.Operation
		for _, ex := range rec.take() {
			if o := checker.check(ex); o != nil {
				op = o
			}
		}
		if op == nil {
			continue
		}
		// Each error the operation documents, from the backend. A stream
		// has begun before the backend fails: the error is an event.
		codes := map[string]bool{}
		for _, st := range errorStatuses(op) {
			codes[CodeFor(st)] = true
		}
		if streamed(op) {
			codes[model.ECONFLICT] = true
		}
		if cc.method == "Version" || cc.method == "Doctor" || cc.method == "OpenAPI" {
			continue // they never fail
		}
		for code := range codes {
			b.setFail(code)
			err := cc.call(ctx, c)
			if got := model.ErrorCode(err); got != code {
				t.Errorf("%s failing with %s: the client returned %v (code %s)", cc.method, code, err, got)
			}
			for _, ex := range rec.take() {
				checker.check(ex)
			}
		}
	}
	b.setFail("")

	// The server's own refusals: bodies and parameters it does not take.
	raw := []struct{ method, target, body string }{
		{"POST", "/v1/vms", `{"name": "x", "colour": "blue"}`},
		{"POST", "/v1/vms", `{"name": "x"} trailing`},
		{"PATCH", "/v1/vms/dev", `[]`},
		{"POST", "/v1/images", ``},
		{"POST", "/v1/kernels/build", `{"force": "yes"}`},
		{"POST", "/v1/images/build", `{"packages": "vim"}`},
		{"POST", "/v1/vms/dev/workspace/fetched", `{"guest_path": 1}`},
		{"GET", "/v1/vms/dev/logs?tail=-1", ``},
		{"POST", "/v1/vms/dev/connect?port=0", ``},
		{"POST", "/v1/vms/dev/workspace?mode=full_copy&unknown=1", ``},
		{"POST", "/v1/images/upload?name=a&name=b", ``},
		{"POST", "/v1/vms/dev/hold", ``},
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	for _, r := range raw {
		req, _ := http.NewRequest(r.method, "http://bangerd"+r.target, strings.NewReader(r.body))
		if r.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s %s %q: %d, want 400", r.method, r.target, r.body, resp.StatusCode)
		}
		for _, ex := range rec.take() {
			// The requests are bad on purpose: only the answers are held
			// to the document.
			checker.checkAnswer(ex)
		}
	}

	// Every operation of the document was answered with a success.
	for _, o := range docOperations(doc) {
		ok := false
		for st := range checker.seen[o] {
			if st < 300 {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s was never answered with a success: exercise it in TestOpenAPIContract", o)
		}
	}
}

// checkAnswer validates only the response of a deliberately bad request.
func (c *contractChecker) checkAnswer(ex *exchange) {
	c.t.Helper()
	u, _ := url.Parse("http://bangerd" + ex.target)
	req, _ := http.NewRequest(ex.method, u.String(), nil)
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		c.t.Errorf("%s %s: %v", ex.method, u.Path, err)
		return
	}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: ex.status, Header: ex.respHeader, Options: opts}
	out.SetBodyBytes(ex.respBody)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		c.t.Errorf("%s %s: the server's %d answer does not match openapi.json: %v\nbody: %s", ex.method, u.Path, ex.status, err, ex.respBody)
	}
}
