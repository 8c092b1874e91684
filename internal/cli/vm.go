package cli

import (
	"bufio"
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/model"

	"github.com/spf13/cobra"
)

func (a *App) vmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "vm",
		Aliases: []string{"vms"},
		Short:   "Create, list, start, stop and remove VMs",
	}
	cmd.AddCommand(
		a.vmCreateCommand(), a.vmLsCommand(), a.vmInspectCommand(), a.vmRmCommand(), a.vmSetCommand(),
		a.vmStartCommand(), a.vmStopCommand(), a.vmKillCommand(), a.vmRestartCommand(), a.vmResetSystemCommand(),
		a.vmStatsCommand(), a.vmSuspendCommand(), a.vmForkCommand(),
	)
	return group(cmd)
}

// parseMemory reads --memory: a size ("2G", "512M") or a bare number of
// MiB.
func parseMemory(s string) (int, error) {
	n, err := model.ParseSize(s)
	if err != nil {
		return 0, usagef("--memory: %v (use e.g. 2G or 512M)", err)
	}
	if n%(1<<20) != 0 {
		return 0, usagef("--memory %s: must be a whole number of MiB", s)
	}
	mib := int(n >> 20)
	if err := model.ValidateMemoryMiB(mib); err != nil {
		return 0, usagef("--memory: %v", err)
	}
	return mib, nil
}

// parseDisk reads a disk size flag.
func parseDisk(flag, s string) (int64, error) {
	n, err := model.ParseSize(s)
	if err != nil {
		return 0, usagef("--%s: %v (use e.g. 8G or 512M)", flag, err)
	}
	if err := model.ValidateDiskSize("--"+flag, n); err != nil {
		return 0, usagef("%v", err)
	}
	return n, nil
}

// parseAutoStop reads --auto-stop: a duration, "0"/"never" to disable.
func parseAutoStop(s string) (int64, error) {
	switch s {
	case "0", "never", "off":
		return 0, nil
	case "default":
		return -1, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Minute {
		return 0, usagef("--auto-stop %q: use a duration of at least 1m such as 30m or 2h, \"never\", or \"default\"", s)
	}
	return int64(d / time.Second), nil
}

func (a *App) vmCreateCommand() *cobra.Command {
	var (
		req                                     model.VMCreateRequest
		memory, overlay, disk, autoStop, egress string
		asJSON, quiet                           bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM and boot it",
		Long: `Create a VM and boot it, waiting until it answers SSH.

The VM gets its own copy-on-write system disk from the image, a persistent
work disk mounted at /root, an IP on banger's bridge and a DNS name. Your SSH
public keys (~/.ssh/*.pub, plus a key banger keeps for you) are authorized in
it, so ` + "`banger ssh NAME`" + ` and plain ssh work.

When the image has a warm state (` + "`banger image warm`" + `) made with the VM's
vCPUs, memory and disk sizes, the VM is restored from a copy of it in seconds
instead of booting, and made its own machine as a fork's child is; otherwise,
or with --cold, it boots. The progress says which, and why.

NAME is a DNS label: 1-63 lowercase letters, digits or '-'. Sizes take K, M
or G suffixes (a bare number means MiB). Unset sizes come from the daemon's
[vm_defaults].`,
		Example: `  banger vm create dev
  banger vm create big --vcpus 4 --memory 8G --disk-size 32G --nat
  banger vm create agent --nat --egress allow=*.github.com,pypi.org,10.0.0.0/8
  banger vm create later --no-start`,
		Args: exactArgs(1, "a VM NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if err := model.ValidateVMName(req.Name); err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("vcpus") {
				if err := model.ValidateVCPUCount(req.VCPUCount); err != nil {
					return usagef("--vcpus: %v", err)
				}
			}
			var err error
			if f.Changed("memory") {
				if req.MemoryMiB, err = parseMemory(memory); err != nil {
					return err
				}
			}
			if f.Changed("overlay-size") {
				if req.SystemOverlaySizeByte, err = parseDisk("overlay-size", overlay); err != nil {
					return err
				}
			}
			if f.Changed("disk-size") {
				if req.WorkDiskSizeBytes, err = parseDisk("disk-size", disk); err != nil {
					return err
				}
			}
			if err := parseIdle(req.IdleAction, false); err != nil {
				return err
			}
			req.NATSet = f.Changed("nat")
			if f.Changed("egress") {
				p, err := parseEgress(egress)
				if err != nil {
					return err
				}
				req.Egress = &p
			}
			if f.Changed("auto-stop") {
				secs, err := parseAutoStop(autoStop)
				if err != nil {
					return err
				}
				if secs >= 0 {
					req.AutoStopAfterSeconds = &secs
				}
			}
			keys, err := a.userPublicKeys()
			if err != nil {
				fmt.Fprintf(a.Stderr, "warning: no SSH key of yours will be authorized in the VM: %v\n", err)
			}
			req.SSHPublicKeys = keys
			pp := &progressPrinter{w: a.Stderr, quiet: quiet || asJSON}
			v, err := a.createWithFileSync(cmd.Context(), req, pp.event)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, v)
			}
			if v.State == model.VMStateRunning {
				fmt.Fprintf(a.Stdout, "vm %s is running at %s (%s); connect with: banger ssh %s\n", v.Name, v.Runtime.GuestIP, v.Runtime.DNSName, v.Name)
			} else {
				fmt.Fprintf(a.Stdout, "vm %s created (%s); start it with: banger vm start %s\n", v.Name, v.State, v.Name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.ImageName, "image", "", "image to boot (default: the daemon's default_image_name)")
	f.IntVar(&req.VCPUCount, "vcpus", 0, "vCPUs, 1-32 (default from [vm_defaults], else 2)")
	f.StringVar(&memory, "memory", "", "memory, at least 128M (default from [vm_defaults], else 2G)")
	f.StringVar(&overlay, "overlay-size", "", "system disk size (default from [vm_defaults], else 8G)")
	f.StringVar(&disk, "disk-size", "", "work disk (/root) size (default from [vm_defaults], else 8G)")
	f.BoolVar(&req.NATEnabled, "nat", false, "give the VM outbound internet access through NAT")
	f.StringVar(&egress, "egress", "", egressUsage+" (default from [vm_defaults], else open)")
	f.BoolVar(&req.NoStart, "no-start", false, "only create the VM; start it later with 'banger vm start'")
	f.BoolVar(&req.Cold, "cold", false, "boot from the image even when it has a warm state that fits (see 'banger image warm')")
	f.StringVar(&autoStop, "auto-stop", "", "stop the VM after this much idle time (e.g. 30m, 2h, never)")
	f.StringVar(&req.IdleAction, "idle", "", idleUsage+" (default: the daemon's auto_stop_mode)")
	f.BoolVar(&asJSON, "json", false, "print the VM as JSON")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}

func (a *App) vmLsCommand() *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list", "ps"},
		Short:   "List VMs",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				vms, err := a.api().ListVMs(cmd.Context())
				if err != nil {
					return err
				}
				return printJSON(a.Stdout, vms)
			}
			// The table needs a few fields of each VM: the brief rows.
			vms, err := a.api().ListVMRows(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				out := bufio.NewWriter(a.Stdout)
				for _, v := range vms {
					fmt.Fprintln(out, v.Name)
				}
				return out.Flush()
			}
			t := newTable(a.Stdout, "NAME", "STATE", "IMAGE", "IP", "VCPUS", "MEMORY", "DISK", "NAT", "AUTO-STOP", "CREATED")
			for _, v := range vms {
				auto := "-"
				if v.AutoStopAt != nil {
					auto = until(*v.AutoStopAt)
				}
				state := string(v.State)
				if v.State == model.VMStateError {
					state = "error!"
				}
				if v.State == model.VMStateSuspended {
					state = "suspended " + ago(v.Runtime.SuspendedAt)
				}
				t.row(v.Name, state, orDash(v.ImageName), v.Runtime.GuestIP, strconv.Itoa(v.Spec.VCPUCount),
					model.FormatSizeBytes(int64(v.Spec.MemoryMiB)<<20), model.FormatSizeBytes(v.Spec.WorkDiskSizeBytes),
					yesNo(v.Spec.NATEnabled), auto, ago(v.CreatedAt))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return cmd
}

func (a *App) vmInspectCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:               "inspect NAME",
		Short:             "Show everything about a VM",
		Args:              exactArgs(1, "a VM NAME"),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := a.api().GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, v)
			}
			a.printVM(v)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *App) printVM(v api.VMView) {
	w := a.Stdout
	rt := v.Runtime
	kv := func(k, val string) { fmt.Fprintf(w, "%-18s %s\n", k+":", val) }
	kv("name", v.Name)
	kv("id", v.ID)
	kv("state", string(v.State))
	if rt.LastError != "" {
		kv("last error", rt.LastError)
	}
	kv("image", orDash(v.ImageName))
	if rt.CreatedFrom != "" {
		kv("created from", rt.CreatedFrom)
	}
	kv("owner uid", strconv.Itoa(v.OwnerUID))
	kv("vcpus", strconv.Itoa(v.Spec.VCPUCount))
	kv("memory", model.FormatSizeBytes(int64(v.Spec.MemoryMiB)<<20))
	kv("system disk", fmt.Sprintf("%s (%s) %s", model.FormatSizeBytes(v.Spec.SystemOverlaySizeByte), orDash(rt.OverlayStrategy), rt.SystemOverlay))
	kv("work disk", fmt.Sprintf("%s %s", model.FormatSizeBytes(v.Spec.WorkDiskSizeBytes), rt.WorkDiskPath))
	if v.DiskPool != "" {
		kv("storage pool", v.DiskPool)
	}
	kv("guest ip", rt.GuestIP)
	kv("dns name", orDash(rt.DNSName))
	kv("mac", orDash(rt.GuestMAC))
	kv("tap", orDash(rt.TapDevice))
	kv("nat", yesNo(v.Spec.NATEnabled))
	kv("egress", v.Spec.Egress.String())
	auto := "never"
	if v.AutoStopAt != nil {
		auto = v.AutoStopAt.Local().Format("15:04:05") + " (" + until(*v.AutoStopAt) + ")"
	} else if v.Spec.AutoStopAfterSeconds != nil && *v.Spec.AutoStopAfterSeconds > 0 {
		auto = fmt.Sprintf("after %s idle", time.Duration(*v.Spec.AutoStopAfterSeconds)*time.Second)
	}
	kv("auto-stop", auto)
	if v.IdleAction != "" {
		kv("when idle", v.IdleAction)
	}
	if v.State == model.VMStateSuspended {
		kv("suspended", v.Runtime.SuspendedAt.Local().Format("2006-01-02 15:04:05")+" ("+ago(v.Runtime.SuspendedAt)+")")
		kv("saved state", humanBytes(v.Runtime.SavedStateBytes)+" in "+filepath.Join(rt.VMDir, "saved"))
	}
	if v.PID > 0 {
		kv("vmm pid", strconv.Itoa(v.PID))
	}
	if rt.VMMUID > 0 {
		kv("vmm uid", fmt.Sprintf("%d (unprivileged, no capabilities)", rt.VMMUID))
	}
	if rt.Cgroup != "" {
		kv("cgroup", rt.Cgroup)
	}
	if l := v.Stats.Limits; l != nil {
		kv("limits", fmt.Sprintf("cpu %d%%, memory %s, %d tasks", l.CPUQuotaPercent, humanBytes(l.MemoryMaxBytes), l.PidsMax))
		kv("limits hit", fmt.Sprintf("cpu throttled %d times (%dms), memory limit %d times, %d OOM kills, task limit %d times",
			l.CPUThrottledPeriods, l.CPUThrottledMs, l.MemoryMaxHits, l.OOMKills, l.PidsMaxHits))
	}
	kv("vm dir", rt.VMDir)
	kv("console log", rt.LogPath)
	kv("created", v.CreatedAt.Local().Format("2006-01-02 15:04:05"))
	kv("last touched", ago(v.LastTouchedAt))
	if !v.Stats.CollectedAt.IsZero() {
		kv("cpu", fmt.Sprintf("%.1f%%", v.Stats.CPUPercent))
		kv("rss", humanBytes(v.Stats.RSSBytes))
		kv("disk used", fmt.Sprintf("system %s, work %s", humanBytes(v.Stats.SystemOverlayBytes), humanBytes(v.Stats.WorkDiskBytes)))
	}
}

func (a *App) vmRmCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:               "rm NAME...",
		Aliases:           []string{"remove", "delete"},
		Short:             "Remove VMs and their disks",
		Long:              "Remove VMs and their disks. A running VM is refused unless --force, which stops it first.",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := false
			for _, name := range args {
				pp := &progressPrinter{w: a.Stderr}
				if err := a.api().DeleteVM(cmd.Context(), name, api.VMDeleteOptions{Force: force}, pp.event); err != nil {
					fmt.Fprintf(a.Stderr, "banger: %v\n", err)
					failed = true
					continue
				}
				fmt.Fprintf(a.Stdout, "vm %s removed\n", name)
			}
			if failed {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop running VMs first (and drop unfetched workspace commits)")
	return cmd
}

func (a *App) vmSetCommand() *cobra.Command {
	var (
		vcpus                               int
		memory, disk, nat, as, egress, idle string
		asJSON                              bool
	)
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Change a VM's vCPUs, memory, disk size, NAT, egress or auto-stop",
		Long: `Change a VM. vCPUs and memory change only while the VM is stopped; the work
disk only grows, while stopped; NAT and the egress policy change live
(connections the new policy does not allow stop). A suspended VM keeps its
vCPUs, memory and disk size until its saved state is used or dropped.`,
		Example: `  banger vm set dev --nat on
  banger vm set dev --egress none
  banger vm set dev --vcpus 4 --memory 4G --disk-size 20G
  banger vm set dev --auto-stop 2h`,
		Args:              exactArgs(1, "a VM NAME"),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := model.VMSetRequest{IDOrName: args[0]}
			f := cmd.Flags()
			if f.Changed("vcpus") {
				if err := model.ValidateVCPUCount(vcpus); err != nil {
					return usagef("--vcpus: %v", err)
				}
				req.VCPUCount = &vcpus
			}
			if f.Changed("memory") {
				m, err := parseMemory(memory)
				if err != nil {
					return err
				}
				req.MemoryMiB = &m
			}
			if f.Changed("disk-size") {
				n, err := parseDisk("disk-size", disk)
				if err != nil {
					return err
				}
				req.WorkDiskSizeBytes = &n
			}
			if f.Changed("nat") {
				var on bool
				switch strings.ToLower(nat) {
				case "on", "true", "yes", "1":
					on = true
				case "off", "false", "no", "0":
				default:
					return usagef("--nat %q: use on or off", nat)
				}
				req.NATEnabled = &on
			}
			if f.Changed("auto-stop") {
				secs, err := parseAutoStop(as)
				if err != nil {
					return err
				}
				req.AutoStopAfterSeconds = &secs
			}
			if f.Changed("egress") {
				p, err := parseEgress(egress)
				if err != nil {
					return err
				}
				req.Egress = &p
			}
			if f.Changed("idle") {
				if err := parseIdle(idle, true); err != nil {
					return err
				}
				req.IdleAction = &idle
			}
			if req.VCPUCount == nil && req.MemoryMiB == nil && req.WorkDiskSizeBytes == nil && req.NATEnabled == nil && req.AutoStopAfterSeconds == nil && req.Egress == nil && req.IdleAction == nil {
				return usagef("vm set needs at least one of --vcpus, --memory, --disk-size, --nat, --auto-stop, --idle, --egress")
			}
			v, err := a.api().SetVM(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, v)
			}
			fmt.Fprintf(a.Stdout, "vm %s: %d vCPUs, %s memory, %s disk, nat %s, egress %s\n", v.Name, v.Spec.VCPUCount,
				model.FormatSizeBytes(int64(v.Spec.MemoryMiB)<<20), model.FormatSizeBytes(v.Spec.WorkDiskSizeBytes), onOff(v.Spec.NATEnabled), v.Spec.Egress)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&vcpus, "vcpus", 0, "vCPUs, 1-32 (VM stopped)")
	f.StringVar(&memory, "memory", "", "memory, e.g. 4G (VM stopped)")
	f.StringVar(&disk, "disk-size", "", "grow the work disk to this size (VM stopped)")
	f.StringVar(&nat, "nat", "", "on or off (live)")
	f.StringVar(&as, "auto-stop", "", "idle time before auto-stop (30m, 2h), never, or default")
	f.StringVar(&egress, "egress", "", egressUsage+" (live)")
	f.StringVar(&idle, "idle", "", idleUsage+", or default (the daemon's auto_stop_mode)")
	f.BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

// egressUsage describes the --egress flag.
const egressUsage = "where the VM may connect beyond the host: open, none, or allow=LIST of networks and domains (*.example.com)"

// parseEgress reads --egress; bad input is a usage error.
func parseEgress(s string) (model.EgressPolicy, error) {
	p, err := model.ParseEgress(s)
	if err != nil {
		return p, usagef("--egress: %v", err)
	}
	return p, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// lifecycleCommand builds start/stop/restart: streamed, one VM after
// another.
func (a *App) lifecycleCommand(use, short, done string, op func(ctx context.Context, ref string, progress func(api.Event)) (api.VMView, error)) *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:               use + " NAME...",
		Short:             short,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := false
			var views []api.VMView
			for _, name := range args {
				pp := &progressPrinter{w: a.Stderr, quiet: quiet || asJSON}
				v, err := op(cmd.Context(), name, pp.event)
				if err != nil {
					fmt.Fprintf(a.Stderr, "banger: %s %s: %v\n", use, name, err)
					failed = true
					continue
				}
				views = append(views, v)
				if !asJSON {
					fmt.Fprintf(a.Stdout, "vm %s %s\n", v.Name, done)
				}
			}
			if asJSON {
				if err := printJSON(a.Stdout, views); err != nil {
					return err
				}
			}
			if failed {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VMs as JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}

func (a *App) vmStartCommand() *cobra.Command {
	cmd := a.lifecycleCommand("start", "Boot stopped VMs, or resume suspended ones, and wait until they answer SSH", "is running", func(ctx context.Context, ref string, p func(api.Event)) (api.VMView, error) {
		return a.api().StartVM(ctx, ref, p)
	})
	cmd.Aliases = []string{"resume"}
	cmd.Long = `Boot stopped VMs and wait until they answer SSH. A suspended VM is resumed
instead: its processes carry on where they were, and its clock is set to the
host's. If its saved state cannot be restored, it boots from its disks and
says why.`
	return cmd
}

func (a *App) vmStopCommand() *cobra.Command {
	return a.lifecycleCommand("stop", "Shut VMs down cleanly (Ctrl-Alt-Del, then kill after a timeout)", "stopped", func(ctx context.Context, ref string, p func(api.Event)) (api.VMView, error) {
		return a.api().StopVM(ctx, ref, p)
	})
}

func (a *App) vmRestartCommand() *cobra.Command {
	return a.lifecycleCommand("restart", "Stop and start VMs", "restarted", func(ctx context.Context, ref string, p func(api.Event)) (api.VMView, error) {
		return a.api().RestartVM(ctx, ref, p)
	})
}

func (a *App) vmKillCommand() *cobra.Command {
	return a.lifecycleCommand("kill", "Kill VMs' VMMs at once (no clean shutdown)", "killed", func(ctx context.Context, ref string, _ func(api.Event)) (api.VMView, error) {
		return a.api().KillVM(ctx, ref)
	})
}

func (a *App) vmResetSystemCommand() *cobra.Command {
	return a.lifecycleCommand("reset-system", "Give stopped VMs a fresh system disk from their image, keeping /root", "has a fresh system disk", func(ctx context.Context, ref string, _ func(api.Event)) (api.VMView, error) {
		return a.api().ResetSystem(ctx, ref)
	})
}

// completeVMs completes VM names from the daemon.
func (a *App) completeVMs(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	vms, err := a.api().ListVMs(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, v := range vms {
		if strings.HasPrefix(v.Name, toComplete) {
			out = append(out, v.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
