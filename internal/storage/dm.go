package storage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DMDevice is a device-mapper device banger made.
type DMDevice struct {
	Name string
	// Table is the device's table as `dmsetup table` prints it, with
	// devices as major:minor.
	Table string
	// Deps are the major:minor numbers of the devices in the table, in
	// table order (origin, then COW, for a snapshot).
	Deps []string
}

// chunkSectors is the dm-snapshot chunk size: 8 sectors, 4 KiB.
const chunkSectors = 8

// snapshotTable returns a persistent dm-snapshot table of sectors
// 512-byte sectors over the origin base and the COW device cow.
func snapshotTable(sectors int64, base, cow string) string {
	return fmt.Sprintf("0 %d snapshot %s %s P %d", sectors, base, cow, chunkSectors)
}

func dmCreateArgs(name, table string) []string {
	return []string{"create", name, "--table", table}
}

func dmRemoveArgs(name string) []string { return []string{"remove", name} }

func dmTableArgs(name string) []string { return []string{"table", name} }

func dmMknodesArgs(name string) []string { return []string{"mknodes", name} }

func dmListArgs() []string { return []string{"ls"} }

func dmTargetsArgs() []string { return []string{"targets"} }

func getszArgs(dev string) []string { return []string{"--getsz", dev} }

// parseDMList parses `dmsetup ls`: one "name<TAB>(maj:min)" line per
// device, or "No devices found".
func parseDMList(out []byte) []string {
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line == "No devices found" {
			continue
		}
		names = append(names, strings.Fields(line)[0])
	}
	return names
}

// parseTableDeps returns the major:minor device arguments of a snapshot
// table line, "0 N snapshot 7:0 7:1 P 8". Other targets give none.
func parseTableDeps(table string) []string {
	f := strings.Fields(table)
	if len(f) >= 5 && f[2] == "snapshot" {
		return []string{f[3], f[4]}
	}
	return nil
}

// parseTargets reports whether `dmsetup targets` lists the snapshot
// target.
func parseTargets(out []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 && f[0] == "snapshot" {
			return true
		}
	}
	return false
}

// dmAvailable reports whether this host has a device-mapper control
// node. Without it dmsetup cannot work (opening the node loads a modular
// device-mapper).
func (m *Manager) dmAvailable() bool { return m.exists(m.dmControl) }

// dmLoaded reports whether the kernel's device-mapper is loaded. The
// control node alone does not say so: dmsetup creates it even on a
// kernel without device-mapper, and then fails.
func (m *Manager) dmLoaded() bool { return m.exists(m.dmControl) && m.exists(m.dmSysfs) }

// dmNames returns the names of the banger dm devices. A kernel whose
// device-mapper is not loaded has none, and dmsetup is not run.
func (m *Manager) dmNames(ctx context.Context) ([]string, error) {
	if !m.dmLoaded() {
		return nil, nil
	}
	out, err := m.run.Run(ctx, "dmsetup", dmListArgs()...)
	if err != nil {
		return nil, fmt.Errorf("list dm devices: %w", err)
	}
	var names []string
	for _, n := range parseDMList(out) {
		if strings.HasPrefix(n, DMPrefix) {
			names = append(names, n)
		}
	}
	return names, nil
}

// ListDM returns the dm devices whose names start with DMPrefix, with
// their tables. A host without device-mapper has none.
func (m *Manager) ListDM(ctx context.Context) ([]DMDevice, error) {
	names, err := m.dmNames(ctx)
	if err != nil {
		return nil, err
	}
	devs := make([]DMDevice, 0, len(names))
	for _, n := range names {
		out, err := m.run.Run(ctx, "dmsetup", dmTableArgs(n)...)
		if err != nil {
			return nil, fmt.Errorf("read table of dm device %s: %w", n, err)
		}
		t := strings.TrimSpace(string(out))
		devs = append(devs, DMDevice{Name: n, Table: t, Deps: parseTableDeps(t)})
	}
	return devs, nil
}

// RemoveDM removes a dm device, retrying while it is busy (a VMM that has
// just exited may still hold it for a moment). A device that does not
// exist is not an error.
func (m *Manager) RemoveDM(ctx context.Context, name string) error {
	var err error
	for try := 0; try < m.removeTries; try++ {
		if try > 0 {
			if serr := m.sleep(ctx, time.Duration(try)*200*time.Millisecond); serr != nil {
				return fmt.Errorf("remove dm device %s: %w (last error: %w)", name, serr, err)
			}
		}
		if _, err = m.run.Run(ctx, "dmsetup", dmRemoveArgs(name)...); err == nil {
			return nil
		}
		names, lerr := m.dmNames(ctx)
		if lerr != nil {
			return fmt.Errorf("remove dm device %s: %w", name, err)
		}
		present := false
		for _, n := range names {
			present = present || n == name
		}
		if !present {
			return nil
		}
		m.logger.Debug("dm device busy, retrying", "dm", name, "try", try+1, "err", err)
	}
	return fmt.Errorf("remove dm device %s after %d tries: %w", name, m.removeTries, err)
}

// sectors returns the size of a block device in 512-byte sectors.
func (m *Manager) sectors(ctx context.Context, dev string) (int64, error) {
	out, err := m.run.Run(ctx, "blockdev", getszArgs(dev)...)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size of %s: blockdev printed %q", dev, strings.TrimSpace(string(out)))
	}
	return n, nil
}

// dmNode returns a device node for the dm device name. Without udev,
// dmsetup may leave no /dev/mapper/<name>; then `dmsetup mknodes` makes
// it, and failing that the kernel's /dev/dm-N node (devtmpfs) is used,
// found through /sys/block/dm-N/dm/name.
func (m *Manager) dmNode(ctx context.Context, name string) (string, error) {
	node := filepath.Join(m.mapperDir, name)
	if m.exists(node) {
		return node, nil
	}
	if _, err := m.run.Run(ctx, "dmsetup", dmMknodesArgs(name)...); err != nil {
		m.logger.Debug("dmsetup mknodes failed", "dm", name, "err", err)
	} else if m.exists(node) {
		return node, nil
	}
	entries, err := os.ReadDir(m.sysBlock)
	if err != nil {
		return "", fmt.Errorf("find device node of dm device %s: %w", name, err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "dm-") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.sysBlock, e.Name(), "dm", "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join(m.devDir, e.Name())
		if m.exists(dev) {
			return dev, nil
		}
		return "", fmt.Errorf("find device node of dm device %s: %s is %s but %s does not exist", name, name, e.Name(), dev)
	}
	return "", fmt.Errorf("find device node of dm device %s: no %s and no %s/dm-*/dm/name naming it", name, node, m.sysBlock)
}
