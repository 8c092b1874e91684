package hostexec

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Fake is a Runner for tests. Every command is recorded; Handler decides
// what it prints and whether it fails. A nil Handler, or a Handler that
// returns ErrUnexpected, fails the command and records it in Unexpected so
// the test can fail on it.
type Fake struct {
	Handler func(argv []string, stdin string) (string, error)

	mu         sync.Mutex
	calls      []string
	unexpected []string
	sandboxed  []string
}

// ErrUnexpected is returned by a Handler for a command it does not know.
var ErrUnexpected = fmt.Errorf("unexpected command")

// Run implements Runner.
func (f *Fake) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return f.RunStdin(ctx, nil, name, args...)
}

// RunStdin implements StdinRunner.
func (f *Fake) RunStdin(_ context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	var in string
	if stdin != nil {
		b, _ := io.ReadAll(stdin)
		in = string(b)
	}
	f.mu.Lock()
	f.calls = append(f.calls, strings.Join(argv, " "))
	f.mu.Unlock()
	if f.Handler == nil {
		f.mu.Lock()
		f.unexpected = append(f.unexpected, strings.Join(argv, " "))
		f.mu.Unlock()
		return nil, &ExitError{Argv: argv, Err: ErrUnexpected}
	}
	out, err := f.Handler(argv, in)
	if err == ErrUnexpected {
		f.mu.Lock()
		f.unexpected = append(f.unexpected, strings.Join(argv, " "))
		f.mu.Unlock()
	}
	if err != nil {
		return []byte(out), &ExitError{Argv: argv, Stderr: out, Err: err}
	}
	return []byte(out), nil
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

// Reset forgets the recorded calls.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
	f.unexpected = nil
	f.sandboxed = nil
}
