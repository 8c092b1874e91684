package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// LoopDevice is an attached loop device as losetup reports it.
type LoopDevice struct {
	// Dev is the device node, /dev/loopN.
	Dev string
	// BackFile is the backing file's path, without the " (deleted)" mark.
	BackFile string
	// Deleted says the backing file was removed while attached.
	Deleted  bool
	ReadOnly bool
	// MajMin is the device number, "7:N", as dmsetup tables name it.
	MajMin string
}

// loopColumns are the losetup columns that parseLoops reads.
const loopColumns = "NAME,BACK-FILE,RO,MAJ:MIN"

// attachLoopArgs returns losetup's argv to attach file to the first free
// loop device and print its name.
func attachLoopArgs(file string, readOnly bool) []string {
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	return append(args, file)
}

// detachLoopArgs returns losetup's argv to detach dev.
func detachLoopArgs(dev string) []string { return []string{"-d", dev} }

// listLoopsArgs returns losetup's argv to list loop devices as JSON; with
// a file, only those backed by it.
func listLoopsArgs(file string) []string {
	args := []string{"-l", "-J", "-O", loopColumns}
	if file != "" {
		args = append(args, "-j", file)
	}
	return args
}

// parseLoops parses `losetup -l -J -O NAME,BACK-FILE,RO,MAJ:MIN`. Old
// util-linux prints booleans as "0"/"1" strings and prints nothing at all
// when no device is attached; both are accepted.
func parseLoops(out []byte) ([]LoopDevice, error) {
	if len(bytes.TrimSpace(out)) == 0 {
		return nil, nil
	}
	var doc struct {
		Loops []struct {
			Name     string          `json:"name"`
			BackFile string          `json:"back-file"`
			RO       json.RawMessage `json:"ro"`
			MajMin   string          `json:"maj:min"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parse losetup output: %w", err)
	}
	loops := make([]LoopDevice, 0, len(doc.Loops))
	for _, l := range doc.Loops {
		d := LoopDevice{Dev: l.Name, MajMin: strings.TrimSpace(l.MajMin)}
		d.BackFile, d.Deleted = strings.CutSuffix(l.BackFile, " (deleted)")
		switch strings.Trim(string(l.RO), `" `) {
		case "true", "1":
			d.ReadOnly = true
		}
		loops = append(loops, d)
	}
	return loops, nil
}

// attachLoop attaches file to a free loop device and returns the device.
func (m *Manager) attachLoop(ctx context.Context, file string, readOnly bool) (string, error) {
	out, err := m.run.Run(ctx, "losetup", attachLoopArgs(file, readOnly)...)
	if err != nil {
		return "", fmt.Errorf("attach loop device to %s: %w", file, err)
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/") {
		return "", fmt.Errorf("attach loop device to %s: losetup printed %q, not a device", file, dev)
	}
	return dev, nil
}

// ListLoops returns every attached loop device with its backing file.
func (m *Manager) ListLoops(ctx context.Context) ([]LoopDevice, error) {
	out, err := m.run.Run(ctx, "losetup", listLoopsArgs("")...)
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	return parseLoops(out)
}

// LoopsFor returns the loop devices backed by file (losetup -j).
func (m *Manager) LoopsFor(ctx context.Context, file string) ([]LoopDevice, error) {
	out, err := m.run.Run(ctx, "losetup", listLoopsArgs(file)...)
	if err != nil {
		return nil, fmt.Errorf("list loop devices of %s: %w", file, err)
	}
	return parseLoops(out)
}

// DetachLoop detaches a loop device. A device that is not attached is
// not an error. The kernel defers the detach of a device still in use
// (by a dm device, say) until its last close.
func (m *Manager) DetachLoop(ctx context.Context, dev string) error {
	_, err := m.run.Run(ctx, "losetup", detachLoopArgs(dev)...)
	if err == nil {
		return nil
	}
	loops, lerr := m.ListLoops(ctx)
	if lerr != nil {
		return fmt.Errorf("detach loop device %s: %w", dev, err)
	}
	for _, l := range loops {
		if l.Dev == dev {
			return fmt.Errorf("detach loop device %s: %w", dev, err)
		}
	}
	return nil
}
