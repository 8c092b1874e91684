package daemon

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"banger/internal/hostexec"
	"banger/internal/model"
	"banger/internal/network"
)

// vmUIDBase is the first of the per-VM unprivileged uids: a VM's user
// is vmUIDBase plus its guest IP's offset in the bridge's subnet, so two
// VMs never share one.
const vmUIDBase = 1500000000

// vmUser returns the unprivileged user (uid and gid alike) that works on
// vm's disks: e2fsprogs run as it on a filesystem the guest wrote.
//
// TODO(lead): this is computed from the guest IP the way Runtime.VMMUID
// will be; use vm.Runtime.VMMUID instead once it lands in main.
func (d *Daemon) vmUser(vm model.VMRecord) (hostexec.Credential, error) {
	prefix, err := network.Subnet(d.cfg.BridgeIP, d.cfg.CIDR)
	if err != nil {
		return hostexec.Credential{}, err
	}
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil || !ip.Is4() || !prefix.Contains(ip) {
		return hostexec.Credential{}, fmt.Errorf("vm %s: guest ip %q is not in %s; cannot derive its user", vm.Name, vm.Runtime.GuestIP, prefix)
	}
	offset := binary.BigEndian.Uint32(ip.AsSlice()) - binary.BigEndian.Uint32(prefix.Addr().AsSlice())
	uid := uint32(vmUIDBase) + offset
	return hostexec.Credential{UID: uid, GID: uid}, nil
}
