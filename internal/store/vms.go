package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"banger/internal/model"
)

const vmColumns = `id, name, image_id, owner_uid, state, guest_ip, created_at, updated_at, last_touched_at, spec_json, runtime_json, stats_json`

func scanVM(row interface{ Scan(...any) error }) (model.VMRecord, error) {
	var vm model.VMRecord
	var guestIP, created, updated, touched, spec, runtime, stats string
	if err := row.Scan(&vm.ID, &vm.Name, &vm.ImageID, &vm.OwnerUID, &vm.State, &guestIP, &created, &updated, &touched, &spec, &runtime, &stats); err != nil {
		return vm, err
	}
	vm.CreatedAt = parseTime(created)
	vm.UpdatedAt = parseTime(updated)
	vm.LastTouchedAt = parseTime(touched)
	if err := json.Unmarshal([]byte(spec), &vm.Spec); err != nil {
		return vm, fmt.Errorf("vm %s: decode spec: %w", vm.Name, err)
	}
	if err := json.Unmarshal([]byte(runtime), &vm.Runtime); err != nil {
		return vm, fmt.Errorf("vm %s: decode runtime: %w", vm.Name, err)
	}
	if err := json.Unmarshal([]byte(stats), &vm.Stats); err != nil {
		return vm, fmt.Errorf("vm %s: decode stats: %w", vm.Name, err)
	}
	// The state column is the source of truth; the runtime mirrors it.
	vm.Runtime.State = vm.State
	return vm, nil
}

func vmArgs(vm model.VMRecord) ([]any, error) {
	vm.Runtime.State = vm.State
	spec, err := json.Marshal(vm.Spec)
	if err != nil {
		return nil, err
	}
	runtime, err := json.Marshal(vm.Runtime)
	if err != nil {
		return nil, err
	}
	stats, err := json.Marshal(vm.Stats)
	if err != nil {
		return nil, err
	}
	return []any{vm.ID, vm.Name, vm.ImageID, vm.OwnerUID, string(vm.State), vm.Runtime.GuestIP, formatTime(vm.CreatedAt), formatTime(vm.UpdatedAt), formatTime(vm.LastTouchedAt), string(spec), string(runtime), string(stats)}, nil
}

// CreateVM stores a new VM. A taken name or guest IP is ECONFLICT; an
// unknown image is ENOTFOUND.
func (s *DB) CreateVM(ctx context.Context, vm model.VMRecord) error {
	args, err := vmArgs(vm)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO vms (`+vmColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`, args...)
	return mapError(err, fmt.Sprintf("vm %q", vm.Name))
}

// UpdateVM rewrites a VM row (not its ID, name, image, owner or creation
// time).
func (s *DB) UpdateVM(ctx context.Context, vm model.VMRecord) error {
	args, err := vmArgs(vm)
	if err != nil {
		return err
	}
	res, err := s.exec(ctx, `UPDATE vms SET state=?, guest_ip=?, updated_at=?, last_touched_at=?, spec_json=?, runtime_json=?, stats_json=? WHERE id=?`,
		args[4], args[5], args[7], args[8], args[9], args[10], args[11], vm.ID)
	if err != nil {
		return mapError(err, fmt.Sprintf("vm %q", vm.Name))
	}
	return requireOne(res, "vm", vm.Name)
}

// UpdateVMStats writes only a VM's stats, so the poller never overwrites a
// concurrent lifecycle change.
func (s *DB) UpdateVMStats(ctx context.Context, id string, stats model.VMStats) error {
	b, err := json.Marshal(stats)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `UPDATE vms SET stats_json=? WHERE id=?`, string(b), id)
	return mapError(err, "vm")
}

// TouchVM records use of a VM.
func (s *DB) TouchVM(ctx context.Context, id string, t time.Time) error {
	_, err := s.exec(ctx, `UPDATE vms SET last_touched_at=? WHERE id=? AND last_touched_at < ?`, formatTime(t), id, formatTime(t))
	return err
}

// GetVM finds a VM by ID, unique ID prefix, or name.
func (s *DB) GetVM(ctx context.Context, idOrName string) (model.VMRecord, error) {
	vm, err := scanVM(s.queryRow(ctx, `SELECT `+vmColumns+` FROM vms WHERE name = ? OR id = ? LIMIT 1`, idOrName, idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		return vm, model.Errorf(model.ENOTFOUND, "vm %q not found; see `banger vm ls`", idOrName)
	}
	return vm, err
}

// ListVMs returns every VM, by name.
func (s *DB) ListVMs(ctx context.Context) ([]model.VMRecord, error) {
	rows, err := s.query(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.VMRecord
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	return out, rows.Err()
}

// DeleteVM removes a VM row.
func (s *DB) DeleteVM(ctx context.Context, id string) error {
	res, err := s.exec(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return mapError(err, "vm")
	}
	return requireOne(res, "vm", id)
}

// GuestIPs returns the guest IPs in use.
func (s *DB) GuestIPs(ctx context.Context) ([]string, error) {
	rows, err := s.query(ctx, `SELECT guest_ip FROM vms`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var ip string
		if err := rows.Scan(&ip); err != nil {
			return nil, err
		}
		out = append(out, ip)
	}
	return out, rows.Err()
}

// VMUsage is what one owner's VMs hold, as the per-user limits count it.
type VMUsage struct {
	// VMs are the owner's VMs; Unstarted those in state created.
	VMs, Unstarted int
	// DiskBytes adds up the system and work disk sizes of their specs.
	DiskBytes int64
}

// UsageOf adds up uid's VMs in one query on the owner index, without
// reading (or decoding) any other row.
func (s *DB) UsageOf(ctx context.Context, uid int) (VMUsage, error) {
	var u VMUsage
	err := s.queryRow(ctx, `SELECT COUNT(*),
		COALESCE(SUM(state = ?), 0),
		COALESCE(SUM(COALESCE(json_extract(spec_json, '$.system_overlay_size_bytes'), 0) + COALESCE(json_extract(spec_json, '$.work_disk_size_bytes'), 0)), 0)
		FROM vms WHERE owner_uid = ?`, string(model.VMStateCreated), uid).Scan(&u.VMs, &u.Unstarted, &u.DiskBytes)
	if err != nil {
		return VMUsage{}, fmt.Errorf("usage of uid %d: %w", uid, err)
	}
	return u, nil
}

// CountVMs is how many VMs exist (each holds a guest address).
func (s *DB) CountVMs(ctx context.Context) (int, error) {
	var n int
	if err := s.queryRow(ctx, `SELECT COUNT(*) FROM vms`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count vms: %w", err)
	}
	return n, nil
}
