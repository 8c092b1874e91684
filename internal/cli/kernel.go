package cli

import (
	"fmt"

	"banger/internal/api"

	"github.com/spf13/cobra"
)

func (a *App) kernelCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "kernel",
		Aliases: []string{"kernels"},
		Short:   "Build and list Firecracker-ready guest kernels",
	}
	cmd.AddCommand(a.kernelBuildCommand(), a.kernelLsCommand())
	return group(cmd)
}

func (a *App) kernelBuildCommand() *cobra.Command {
	var req api.KernelBuildRequest
	var quiet bool
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build a vmlinux that Firecracker (and banger-vmm-qemu) boots",
		Long: `Build an uncompressed ELF vmlinux from this host's Debian kernel source package
(linux-source-*), configured with Firecracker's CI guest config: virtio-mmio,
ext4, in-kernel ip= autoconfiguration, and Ctrl-Alt-Del support built in.

The result is kept in the daemon's state dir under a name that records the
source version and a hash of the config, and is reused when present (--force
rebuilds). A build takes about 10 minutes on 2 cores; the full log is kept.

Kernel builds are for root and members of the daemon's admin group
(banger-admin): every image boots these kernels.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pp := &progressPrinter{w: a.Stderr, quiet: quiet}
			k, err := a.api().BuildKernel(cmd.Context(), req, pp.event)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.Stdout, "kernel %s (%s, config %s): %s\n", k.Name, k.SourceVersion, k.ConfigHash, k.Path)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Version, "version", "", "linux-source version to build, e.g. 6.1 (default: newest installed)")
	cmd.Flags().BoolVar(&req.Force, "force", false, "rebuild even if a matching kernel exists")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print the result")
	return cmd
}

func (a *App) kernelLsCommand() *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List built kernels",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ks, err := a.api().ListKernels(cmd.Context())
			if err != nil {
				return err
			}
			switch {
			case asJSON:
				return printJSON(a.Stdout, ks)
			case quiet:
				for _, k := range ks {
					fmt.Fprintln(a.Stdout, k.Name)
				}
				return nil
			}
			t := newTable(a.Stdout, "NAME", "SOURCE", "CONFIG", "SIZE", "BUILT", "PATH")
			for _, k := range ks {
				t.row(k.Name, k.SourceVersion, k.ConfigHash, humanBytes(k.SizeBytes), ago(k.BuiltAt), k.Path)
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return cmd
}
