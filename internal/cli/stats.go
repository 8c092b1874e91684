package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"banger/internal/model"

	"github.com/spf13/cobra"
)

func (a *App) vmStatsCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:               "stats NAME",
		Short:             "Show a VM's CPU, memory, disk use and VMM metrics",
		Args:              exactArgs(1, "a VM NAME"),
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.api().VMStats(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, st)
			}
			w := a.Stdout
			kv := func(k, v string) { fmt.Fprintf(w, "%-16s %s\n", k+":", v) }
			if st.SavedStateBytes > 0 {
				kv("saved state", humanBytes(st.SavedStateBytes)+" on disk (suspended)")
			}
			if st.CollectedAt.IsZero() {
				fmt.Fprintln(w, "no stats yet (the VM has not run since the daemon started polling)")
				if st.EgressDenied > 0 {
					kv("egress denied", fmt.Sprintf("%d connections", st.EgressDenied))
				}
				return nil
			}
			kv("collected", st.CollectedAt.Local().Format("15:04:05")+" ("+ago(st.CollectedAt)+")")
			kv("cpu", fmt.Sprintf("%.1f%% of one host CPU", st.CPUPercent))
			kv("rss", humanBytes(st.RSSBytes))
			kv("vsz", humanBytes(st.VSZBytes))
			kv("system disk", humanBytes(st.SystemOverlayBytes)+" allocated")
			kv("work disk", humanBytes(st.WorkDiskBytes)+" allocated")
			kv("last active", ago(st.LastActiveAt))
			kv("egress denied", fmt.Sprintf("%d connections", st.EgressDenied))
			if len(st.MetricsRaw) > 0 {
				fmt.Fprintln(w, "vmm metrics (since the previous flush):")
				for _, line := range metricLines(st.MetricsRaw) {
					fmt.Fprintln(w, "  "+line)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// metricLines picks the byte and packet counters of block and network
// devices out of a Firecracker metrics line.
func metricLines(m map[string]any) []string {
	var out []string
	for k, v := range m {
		sub, ok := v.(map[string]any)
		if !ok || !(strings.HasPrefix(k, "block_") || strings.HasPrefix(k, "net_")) {
			continue
		}
		var parts []string
		for _, c := range []string{"read_bytes", "write_bytes", "rx_bytes_count", "tx_bytes_count", "rx_packets_count", "tx_packets_count"} {
			if n, ok := sub[c].(float64); ok {
				parts = append(parts, fmt.Sprintf("%s=%s", c, humanBytes(int64(n))))
			}
		}
		if len(parts) > 0 {
			out = append(out, k+": "+strings.Join(parts, " "))
		}
	}
	sort.Strings(out)
	return out
}

func (a *App) topCommand() *cobra.Command {
	var interval time.Duration
	var once bool
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Live view of all VMs: state, CPU, memory, disk, idle time",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			for {
				if err := a.topOnce(ctx, !once); err != nil {
					return err
				}
				if once {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	cmd.Flags().DurationVarP(&interval, "interval", "n", 2*time.Second, "refresh interval")
	cmd.Flags().BoolVar(&once, "once", false, "print one screen and exit")
	return cmd
}

func (a *App) topOnce(ctx context.Context, clear bool) error {
	vms, err := a.api().ListVMs(ctx)
	if err != nil {
		return err
	}
	if clear {
		fmt.Fprint(a.Stdout, "\x1b[H\x1b[2J")
	}
	fmt.Fprintf(a.Stdout, "banger top — %s — %d VMs\n\n", time.Now().Format("15:04:05"), len(vms))
	t := newTable(a.Stdout, "NAME", "STATE", "CPU%", "RSS", "SYSTEM", "WORK", "IDLE", "AUTO-STOP", "UPTIME", "SAVED")
	for _, v := range vms {
		cpu, rss, sys, work, idle, up, saved := "-", "-", "-", "-", "-", "-", "-"
		state := string(v.State)
		if v.State == model.VMStateSuspended {
			// Suspended: its disks as last seen, the saved state's size,
			// and since when.
			saved = humanBytes(v.Runtime.SavedStateBytes)
			state = "suspended " + ago(v.Runtime.SuspendedAt)
			if !v.Stats.CollectedAt.IsZero() {
				sys = humanBytes(v.Stats.SystemOverlayBytes)
				work = humanBytes(v.Stats.WorkDiskBytes)
			}
		}
		if v.State == model.VMStateRunning {
			st := v.Stats
			if !st.CollectedAt.IsZero() {
				cpu = fmt.Sprintf("%.1f", st.CPUPercent)
				rss = humanBytes(st.RSSBytes)
				sys = humanBytes(st.SystemOverlayBytes)
				work = humanBytes(st.WorkDiskBytes)
			}
			last := v.LastTouchedAt
			if st.LastActiveAt.After(last) {
				last = st.LastActiveAt
			}
			idle = roughDuration(time.Since(last))
			if !v.Runtime.StartedAt.IsZero() {
				up = roughDuration(time.Since(v.Runtime.StartedAt))
			}
		}
		auto := "-"
		if v.AutoStopAt != nil {
			auto = until(*v.AutoStopAt)
		}
		t.row(v.Name, state, cpu, rss, sys, work, idle, auto, up, saved)
	}
	return t.flush()
}
