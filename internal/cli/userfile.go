package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"banger/internal/model"
)

// openUserFile opens a file the user names for the daemon, with the
// user's rights: the daemon never opens it itself. Only a regular file
// named directly is taken: the last component must not be a symbolic
// link (/proc/self/fd/N included), and a FIFO or device is refused at
// once instead of blocking (the open does not wait for a writer).
func openUserFile(flag, path string) (*os.File, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(abs, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) && errors.Is(pe.Err, unix.ELOOP) {
			return nil, model.Errorf(model.EINVALID, "--%s %s: is a symbolic link; banger reads only the file itself: pass --%s \"$(readlink -f %s)\"", flag, path, flag, path)
		}
		if errors.As(err, &pe) && errors.Is(pe.Err, unix.EACCES) {
			return nil, model.Errorf(model.EFORBIDDEN, "--%s %s: you cannot read it (permission denied); banger only uses files you can read yourself", flag, path)
		}
		if errors.As(err, &pe) && errors.Is(pe.Err, unix.ENXIO) {
			return nil, model.Errorf(model.EINVALID, "--%s %s: not a regular file (a socket?); pass an image file", flag, path)
		}
		return nil, model.Errorf(model.EINVALID, "--%s: %v", flag, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("--%s %s: %w", flag, path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		what := "not a regular file"
		switch {
		case fi.IsDir():
			what = "a directory"
		case fi.Mode()&os.ModeNamedPipe != 0:
			what = "a FIFO"
		case fi.Mode()&os.ModeDevice != 0:
			what = "a device"
		case fi.Mode()&os.ModeSocket != 0:
			what = "a socket"
		}
		return nil, model.Errorf(model.EINVALID, "--%s %s: is %s; pass a regular file", flag, path, what)
	}
	// Reads of a regular file never block; clear O_NONBLOCK anyway so
	// the file behaves as usual.
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, fmt.Errorf("--%s %s: %w", flag, path, err)
	}
	return f, nil
}
