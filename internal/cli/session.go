package cli

import (
	"banger/internal/api"
	"banger/internal/guestinit"
)

// sessionCommand is the remote command that runs args (a command as ssh
// takes it; none for a login shell) the way the VM's image asks: as its
// user, in its working directory, with its environment, through
// banger-init in the guest. ok is false for images that ask nothing,
// whose sessions stay root's as before.
func sessionCommand(vm api.VMView, args []string) (cmd string, ok bool) {
	if vm.ImageConfig == nil {
		return "", false
	}
	cmd = "exec " + guestinit.BinPath + " session"
	if len(args) > 0 {
		cmd += " -c " + shellQuote(remoteCommand(args))
	}
	return cmd, true
}
