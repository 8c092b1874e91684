package cli

import (
	"context"
	"fmt"

	"banger/internal/api"
	"banger/internal/model"

	"github.com/spf13/cobra"
)

// idleUsage describes the --idle flag.
const idleUsage = "what happens when the VM is idle past its auto-stop time: suspend (its processes are kept) or stop"

// parseIdle checks --idle; set also allows "default".
func parseIdle(s string, set bool) error {
	if set && s == model.IdleDefault {
		return nil
	}
	if err := model.ValidateIdleAction("--idle", s); err != nil {
		return usagef("%v", err)
	}
	return nil
}

func (a *App) vmSuspendCommand() *cobra.Command {
	cmd := a.lifecycleCommand("suspend", "Save VMs' memory and free their VMMs; `vm start` resumes them", "is suspended", func(ctx context.Context, ref string, p func(api.Event)) (api.VMView, error) {
		return a.api().SuspendVM(ctx, ref, p)
	})
	cmd.Long = `Suspend running VMs: each is paused, its memory and device state are saved in
its VM directory, and its VMM, tap, NAT rules and DNS answer are released as
for a stop; its IP stays reserved. ` + "`banger vm start`" + ` (or ` + "`vm resume`" + `) restores
it with its processes, open files and listening servers as they were, and sets
its clock. ` + "`banger vm stop`" + ` of a suspended VM drops the saved state.`
	return cmd
}

// wake resumes a suspended VM before a command that needs it running
// (ssh, exec, cp), saying so on stderr.
func (a *App) wake(ctx context.Context, vm api.VMView) (api.VMView, error) {
	if vm.State != model.VMStateSuspended {
		return vm, nil
	}
	fmt.Fprintf(a.Stderr, "vm %s is suspended (since %s); resuming it\n", vm.Name, ago(vm.Runtime.SuspendedAt))
	pp := &progressPrinter{w: a.Stderr, quiet: true}
	return a.api().StartVM(ctx, vm.Name, pp.event)
}
