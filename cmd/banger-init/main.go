// Command banger-init is banger's init for guest images without one of
// their own, and the helper that runs ssh sessions as an image's user.
// The image build copies it into images imported from container images;
// it must be built statically (scripts/build.sh builds with
// CGO_ENABLED=0, and the package imports neither net nor os/user).
//
//	as PID 1 (the image's /sbin/init)    the init
//	poweroff | reboot | halt [-f]       ask PID 1 to end the VM
//	banger-init session [-c COMMAND]    an ssh session as the image's user
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"banger/internal/guestinit"
)

func main() {
	if os.Getpid() == 1 {
		guestinit.RunInit()
		return
	}
	switch name := filepath.Base(os.Args[0]); name {
	case "poweroff", "reboot", "halt":
		os.Exit(guestinit.Power(name, os.Args[1:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "session" {
		os.Exit(guestinit.Session(os.Args[2:]))
	}
	fmt.Fprintln(os.Stderr, "banger-init is banger's guest init: it runs as PID 1, as poweroff, reboot or halt, or as `banger-init session [-c COMMAND]`")
	os.Exit(2)
}
