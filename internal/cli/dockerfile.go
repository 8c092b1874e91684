package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/model"
)

// builder is a container builder a Dockerfile is built with, run by the
// CLI as the user: the daemon never runs a user's build steps.
type builder struct {
	name string
	bin  string
}

// buildArgv builds the Dockerfile in dir, writing the image's ID to
// iidfile.
func (b builder) buildArgv(dockerfile, dir, iidfile string) []string {
	switch b.name {
	case "podman":
		return []string{b.bin, "build", "--file", dockerfile, "--iidfile", iidfile, dir}
	}
	// chroot isolation needs no OCI runtime and works for root and, in
	// a user namespace, for other users.
	return []string{b.bin, "build", "--isolation", "chroot", "--file", dockerfile, "--iidfile", iidfile, dir}
}

// saveArgv writes image id as an OCI archive.
func (b builder) saveArgv(id, archive string) []string {
	switch b.name {
	case "podman":
		return []string{b.bin, "save", "--format", "oci-archive", "--output", archive, id}
	}
	return []string{b.bin, "push", id, "oci-archive:" + archive}
}

// rmiArgv removes image id from the builder's storage.
func (b builder) rmiArgv(id string) []string { return []string{b.bin, "rmi", id} }

// findBuilder picks buildah, else podman.
func findBuilder() (builder, error) {
	for _, n := range []string{"buildah", "podman"} {
		if p, err := exec.LookPath(n); err == nil {
			return builder{name: n, bin: p}, nil
		}
	}
	return builder{}, model.Errorf(model.EUNAVAILABLE, "--dockerfile needs buildah or podman: apt-get install buildah")
}

// buildDockerfile builds a Dockerfile with the user's builder, as the
// user, its output shown as progress, and saves the result as an OCI
// archive in a temporary file, which cleanup removes (with the image in
// the builder's storage).
func (a *App) buildDockerfile(ctx context.Context, dockerfile, contextDir string, pp *progressPrinter) (string, func(), error) {
	fi, err := os.Stat(dockerfile)
	if err != nil || !fi.Mode().IsRegular() {
		return "", nil, model.Errorf(model.EINVALID, "--dockerfile %s: not a file you can read", dockerfile)
	}
	if contextDir == "" {
		contextDir = filepath.Dir(dockerfile)
	}
	if fi, err := os.Stat(contextDir); err != nil || !fi.IsDir() {
		return "", nil, model.Errorf(model.EINVALID, "--context %s: not a directory", contextDir)
	}
	b, err := findBuilder()
	if err != nil {
		return "", nil, err
	}
	tmp, err := os.MkdirTemp("", "banger-dockerfile-")
	if err != nil {
		return "", nil, err
	}
	var id string
	cleanup := func() {
		if id != "" {
			_ = exec.Command(b.rmiArgv(id)[0], b.rmiArgv(id)[1:]...).Run()
		}
		os.RemoveAll(tmp)
	}
	start := time.Now()
	iidfile := filepath.Join(tmp, "iid")
	if err := a.runBuilder(ctx, b.buildArgv(dockerfile, contextDir, iidfile), start, pp); err != nil {
		cleanup()
		return "", nil, err
	}
	raw, err := os.ReadFile(iidfile)
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("%s build wrote no image ID: %w", b.name, err)
	}
	id = strings.TrimPrefix(strings.TrimSpace(string(raw)), "sha256:")
	if len(id) != 64 || strings.Trim(id, "0123456789abcdef") != "" {
		id = ""
		cleanup()
		return "", nil, fmt.Errorf("%s build wrote %q, not an image ID", b.name, raw)
	}
	archive := filepath.Join(tmp, "image-"+randomHex()+".tar")
	if err := a.runBuilder(ctx, b.saveArgv(id, archive), start, pp); err != nil {
		cleanup()
		return "", nil, err
	}
	return archive, cleanup, nil
}

// runBuilder runs a builder command, each line of its output a progress
// line ("dockerfile: ...").
func (a *App) runBuilder(ctx context.Context, argv []string, start time.Time, pp *progressPrinter) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var wg sync.WaitGroup
	var tail []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			tail = append(tail, line)
			if len(tail) > 10 {
				tail = tail[1:]
			}
			pp.event(api.Event{Type: api.EventProgress, ElapsedMS: time.Since(start).Milliseconds(),
				Progress: &api.Progress{Step: "dockerfile", Message: line}})
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return model.Errorf(model.EINVALID, "%s failed (%v); it said:\n%s", strings.Join(argv[:2], " "), err, strings.Join(tail, "\n"))
	}
	return nil
}

func randomHex() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
