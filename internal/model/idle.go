package model

// What the idle policy does to a VM idle past its auto-stop time.
const (
	// IdleSuspend saves the VM's memory and device state and frees its
	// VMM: its processes carry on when it is started again.
	IdleSuspend = "suspend"
	// IdleStop shuts the VM down; the next start boots it from its disks.
	IdleStop = "stop"
	// IdleDefault, in a set request, goes back to the daemon's
	// auto_stop_mode.
	IdleDefault = "default"
)

// ValidateIdleAction checks an idle action: IdleSuspend, IdleStop, or ""
// (the daemon's default). field names the flag or key for the message.
func ValidateIdleAction(field, v string) error {
	switch v {
	case "", IdleSuspend, IdleStop:
		return nil
	}
	return Errorf(EINVALID, "%s %q: use %q (keep the VM's processes, freeing its VMM) or %q (shut it down)", field, v, IdleSuspend, IdleStop)
}
