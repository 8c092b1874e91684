package daemon

import (
	"banger/internal/hostexec"
	"banger/internal/model"
)

// vmUser returns the VM's own unprivileged user (uid and gid alike, see
// vmmUID): its VMM runs as it, and the e2fsprogs that work on the
// filesystems the guest wrote run as it too.
func (d *Daemon) vmUser(vm model.VMRecord) (hostexec.Credential, error) {
	uid, err := d.vmmUID(vm)
	if err != nil {
		return hostexec.Credential{}, err
	}
	return hostexec.Credential{UID: uint32(uid), GID: uint32(uid)}, nil
}
