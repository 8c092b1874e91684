package cli

import (
	"context"
	"fmt"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/doctor"
	"banger/internal/hostexec"

	"github.com/spf13/cobra"
)

func (a *App) doctorCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what banger needs",
		Long: `Check this host for what banger needs: KVM, the VMM (Firecracker or
banger-vmm-qemu), device-mapper, loop devices, tun, iptables, ip_forward, free
disk, build tools, and whether bangerd answers.

Each check is PASS, WARN or FAIL with a line saying how to fix it. The exit
status is 1 when any check FAILs.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := a.doctorChecks(cmd.Context())
			if asJSON {
				if err := printJSON(a.Stdout, checks); err != nil {
					return err
				}
			} else {
				for _, c := range checks {
					fmt.Fprintf(a.Stdout, "%-4s  %-14s %s\n", c.Status, c.Name, c.Detail)
					if c.Fix != "" && c.Status != api.StatusPass {
						fmt.Fprintf(a.Stdout, "      %-14s fix: %s\n", "", c.Fix)
					}
				}
			}
			if doctor.Failed(checks) {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// doctorChecks asks the daemon for its host checks and adds the CLI's own.
// When the daemon is down it runs the host checks itself, with the
// configuration it can read.
func (a *App) doctorChecks(ctx context.Context) []api.DoctorCheck {
	var checks []api.DoctorCheck
	v, err := a.api().Version(ctx)
	if err != nil {
		checks = append(checks, api.DoctorCheck{Name: "daemon", Status: api.StatusFail, Detail: err.Error(), Fix: "start bangerd (systemctl start bangerd, or run `sudo bangerd`)"})
		path, explicit := config.Path("")
		cfg, cerr := config.Load(path, explicit)
		if cerr != nil {
			cfg = config.Default()
		}
		vmm := ""
		for _, name := range []string{cfg.FirecrackerBin, "firecracker", "banger-vmm-qemu"} {
			if name == "" {
				continue
			}
			if p, err := hostexec.LookPath(name); err == nil {
				vmm = p
				break
			}
		}
		checks = append(checks, doctor.Host(ctx, doctor.Input{Config: cfg, VMMPath: vmm, VMs: -1}, hostexec.Real{})...)
	} else {
		checks = append(checks, api.DoctorCheck{Name: "daemon", Status: api.StatusPass, Detail: fmt.Sprintf("bangerd %s at %s", v.Version, a.api().Socket())})
		hc, err := a.api().Doctor(ctx)
		if err != nil {
			checks = append(checks, api.DoctorCheck{Name: "daemon-checks", Status: api.StatusFail, Detail: err.Error()})
		}
		checks = append(checks, hc...)
	}
	if p, err := hostexec.LookPath("ssh"); err == nil {
		checks = append(checks, api.DoctorCheck{Name: "ssh-client", Status: api.StatusPass, Detail: p})
	} else {
		checks = append(checks, api.DoctorCheck{Name: "ssh-client", Status: api.StatusWarn, Detail: "no ssh client: `banger ssh`, `exec` and `cp` need it", Fix: "apt-get install openssh-client"})
	}
	return checks
}
