package hostexec

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Fake is a Runner for tests. Every command is recorded; Handler decides
// what it prints and whether it fails. A nil Handler, or a Handler that
// returns ErrUnexpected, fails the command and records it in Unexpected so
// the test can fail on it. A command run with Options is recorded with
// them in front ("[as 1000:1000, fd 3=/path] e2fsck -fy /proc/self/fd/3");
// the Handler sees /proc/self/fd/N arguments pointing at the inherited
// files' descriptors in this process, which is where the command runs.
type Fake struct {
	Handler func(argv []string, stdin string) (string, error)

	mu         sync.Mutex
	calls      []string
	unexpected []string
}

// ErrUnexpected is returned by a Handler for a command it does not know.
var ErrUnexpected = fmt.Errorf("unexpected command")

// Run implements Runner.
func (f *Fake) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return f.RunStdin(ctx, nil, name, args...)
}

// RunStdin implements StdinRunner.
func (f *Fake) RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	return f.RunWith(ctx, Options{Stdin: stdin}, name, args...)
}

// RunWith implements OptionRunner.
func (f *Fake) RunWith(_ context.Context, opts Options, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	var in string
	if opts.Stdin != nil {
		b, _ := io.ReadAll(opts.Stdin)
		in = string(b)
	}
	call := opts.describe() + strings.Join(argv, " ")
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
	if f.Handler == nil {
		f.mu.Lock()
		f.unexpected = append(f.unexpected, call)
		f.mu.Unlock()
		return nil, &ExitError{Argv: argv, Err: ErrUnexpected}
	}
	out, err := f.Handler(inProcess(argv, opts.ExtraFiles), inProcessText(in, opts.ExtraFiles))
	if err == ErrUnexpected {
		f.mu.Lock()
		f.unexpected = append(f.unexpected, call)
		f.mu.Unlock()
	}
	if err != nil {
		return []byte(out), &ExitError{Argv: argv, Stderr: out, Err: err}
	}
	return []byte(out), nil
}

// inProcessText rewrites the inherited files' paths in a command's
// input (a script naming them) as inProcess does in its arguments.
func inProcessText(in string, files []*os.File) string {
	for i, f := range files {
		in = strings.ReplaceAll(in, FDPath(i), "/proc/self/fd/"+strconv.FormatUint(uint64(f.Fd()), 10))
	}
	return in
}

// inProcess rewrites the arguments that name an inherited file
// (FDPath(i)) to that file's descriptor in this process.
func inProcess(argv []string, files []*os.File) []string {
	if len(files) == 0 {
		return argv
	}
	out := append([]string(nil), argv...)
	for j, a := range out {
		for i, f := range files {
			if a == FDPath(i) {
				out[j] = "/proc/self/fd/" + strconv.FormatUint(uint64(f.Fd()), 10)
			}
		}
	}
	return out
}

// Calls returns every command run so far, one string per command.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Unexpected returns the commands the handler did not know.
func (f *Fake) Unexpected() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.unexpected...)
}

// Reset forgets the recorded calls, not the unexpected ones.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
	// Unexpected is kept: a command the fake did not know before a reset
	// must still fail the test at its end.
}
