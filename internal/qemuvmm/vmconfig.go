package qemuvmm

// vmConfig is GET /vm/config: Firecracker's FullVmConfiguration, with
// null for what is not configured, as Firecracker serializes it. A VM
// restored from a snapshot reports an empty boot source.
func (v *VMM) vmConfig() map[string]any {
	boot := map[string]any{"kernel_image_path": "", "initrd_path": nil, "boot_args": nil}
	if v.boot != nil && !v.restored {
		boot["kernel_image_path"] = v.boot.kernel
		if v.boot.initrd != "" {
			boot["initrd_path"] = v.boot.initrd
		}
		if v.boot.argsSet {
			boot["boot_args"] = v.boot.args
		}
	}
	drives := []map[string]any{}
	for _, d := range v.drives {
		var partUUID any
		if d.partUUID != "" {
			partUUID = d.partUUID
		}
		drives = append(drives, map[string]any{
			"drive_id": d.ID, "partuuid": partUUID, "is_root_device": d.root, "cache_type": d.Cache,
			"is_read_only": d.ReadOnly, "path_on_host": d.Path, "rate_limiter": d.Throttle.rateLimiterJSON(), "io_engine": "Sync", "socket": nil,
		})
	}
	nics := []map[string]any{}
	for _, n := range v.nics {
		var mac, mtu any
		if n.MAC != "" {
			mac = n.MAC
		}
		if n.MTU != 0 {
			mtu = n.MTU
		}
		nics = append(nics, map[string]any{
			"iface_id": n.ID, "host_dev_name": n.Tap, "guest_mac": mac, "mtu": mtu,
			"rx_rate_limiter": nil, "tx_rate_limiter": nil,
		})
	}
	var vsock, balloon, entropy any
	if v.vsock != nil {
		vsock = map[string]any{"guest_cid": v.vsock.cid, "uds_path": v.vsock.udsPath}
	}
	if v.balloon != nil {
		balloon, _ = v.getBalloon()
	}
	if v.entropy != nil {
		var rl any
		if v.entropy.MaxBytes > 0 {
			rl = map[string]any{"bandwidth": map[string]any{"size": v.entropy.MaxBytes, "refill_time": v.entropy.PeriodMS}, "ops": nil}
		}
		entropy = map[string]any{"rate_limiter": rl}
	}
	return map[string]any{
		"balloon":     balloon,
		"drives":      drives,
		"boot-source": boot,
		"cpu-config":  nil,
		"logger":      nil,
		"machine-config": map[string]any{
			"vcpu_count": v.vcpus, "mem_size_mib": v.memMiB, "smt": v.smt && !v.restored,
			"track_dirty_pages": false, "huge_pages": "None",
		},
		"metrics":            nil,
		"mmds-config":        nil,
		"network-interfaces": nics,
		"vsock":              vsock,
		"entropy":            entropy,
		"pmem":               []any{},
		"memory-hotplug":     nil,
	}
}
