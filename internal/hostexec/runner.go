// Package hostexec is the one way banger runs external commands. Each
// subsystem wraps it in typed functions (addTap, attachLoop, ...) and
// tests replace it with a Fake that records every command and answers
// from a handler that keeps state.
package hostexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// Runner runs a command and returns its standard output.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// StdinRunner is a Runner that can also feed a command's standard input.
type StdinRunner interface {
	Runner
	RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error)
}

// Real runs commands on the host with LC_ALL=C so their output parses the
// same everywhere.
type Real struct{}

// Run runs name with args. A failure returns an *ExitError that carries
// the argv and the command's output.
func (Real) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return Real{}.RunStdin(ctx, nil, name, args...)
}

// RunStdin is Run with stdin connected to r.
func (Real) RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &ExitError{Argv: append([]string{name}, args...), Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}

// ExitError is a failed command.
type ExitError struct {
	Argv   []string
	Stdout string
	Stderr string
	Err    error
}

func (e *ExitError) Error() string {
	out := strings.TrimSpace(e.Stderr)
	if out == "" {
		out = strings.TrimSpace(e.Stdout)
	}
	if len(out) > 2000 {
		out = out[:2000] + "..."
	}
	if out == "" {
		return fmt.Sprintf("%s: %v", strings.Join(e.Argv, " "), e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Argv, " "), e.Err, out)
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode returns the command's exit status, or -1 if it did not exit
// normally.
func (e *ExitError) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Available reports whether a command is on PATH.
func Available(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}
