package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"banger/internal/api"
	"banger/internal/model"

	"github.com/spf13/cobra"
)

func (a *App) imageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "image",
		Aliases: []string{"images"},
		Short:   "Build, register, list and remove images (kernel + root filesystem)",
	}
	cmd.AddCommand(a.imageBuildCommand(), a.imageRegisterCommand(), a.imageLsCommand(), a.imageInspectCommand(), a.imageRmCommand(), a.imageWarmCommand())
	return group(cmd)
}

func (a *App) imageBuildCommand() *cobra.Command {
	var req api.ImageBuildRequest
	var packages []string
	var size string
	var quiet bool
	var imp importFlags
	cmd := &cobra.Command{
		Use:   "build [NAME]",
		Short: "Build an image: Debian with debootstrap, or from a container image or a Dockerfile",
		Long: `Build a Debian image: a root filesystem made with debootstrap from this host's
Debian mirror (its apt sources; --mirror overrides), with systemd, openssh-server,
git, ca-certificates and iproute2, tuned to boot fast under Firecracker; a work
seed for each VM's /root; and a Firecracker-ready kernel (the newest one
` + "`banger kernel build`" + ` made, or --kernel).

NAME defaults to the daemon's default_image_name ("default"). The first build
downloads packages and takes minutes; later builds reuse a cache.

With --from, the image is a container image instead: a registry reference
(pulled by the daemon, with your credentials from ~/.docker/config.json), an
OCI archive, a docker save archive or an OCI layout directory (read with your
rights and sent), prefixed with docker://, oci-archive:, docker-archive: or
oci: to say which. With --dockerfile, banger builds the Dockerfile with
buildah (or podman) as you, then imports the result. banger adds what the guest
needs: its init (systemd's units, or banger-init for images without systemd),
sshd trusting the daemon's key (installed with the image's package manager when
missing), the work disk on /root. The image's User, WorkingDir and Env apply to
banger ssh and exec. Layers are checked against their digests; a layer that
climbs out of the image or writes through a link is refused. Unpacked layers
are cached, so rebuilding an unchanged image skips the unpack; image inspect
shows the source's digests.`,
		Example: `  banger kernel build && banger image build
  banger image build dev --packages build-essential,curl
  banger image build dev --release bookworm --docker
  banger image build py --from python:3.12
  docker save myapp:1 -o app.tar && banger image build app --from app.tar
  banger image build app --from oci:./layout
  banger image build app --dockerfile ./Dockerfile --context .`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				req.Name = args[0]
			}
			for _, p := range packages {
				for _, q := range strings.Split(p, ",") {
					if q = strings.TrimSpace(q); q != "" {
						req.Packages = append(req.Packages, q)
					}
				}
			}
			if size != "" {
				n, err := model.ParseSize(size)
				if err != nil {
					return usagef("--size: %v", err)
				}
				req.SizeBytes = n
			}
			pp := &progressPrinter{w: a.Stderr, quiet: quiet}
			if imp.from != "" || imp.dockerfile != "" {
				switch {
				case imp.from != "" && imp.dockerfile != "":
					return usagef("--from and --dockerfile are alternatives: pass one")
				case req.Name == "":
					return usagef("image build --from or --dockerfile needs a NAME")
				case req.Release != "" || req.Mirror != "" || len(req.Packages) > 0 || req.Docker:
					return usagef("--release, --mirror, --packages and --docker are for Debian builds, not --from or --dockerfile")
				}
				img, err := a.runImport(cmd.Context(), imp, api.ImageImportRequest{Name: req.Name, PlainHTTP: imp.plainHTTP, SizeBytes: req.SizeBytes}, req.KernelPath, pp)
				if err != nil {
					return err
				}
				a.printImported(img)
				return nil
			}
			if imp.context != "" || imp.plainHTTP {
				return usagef("--context goes with --dockerfile, --plain-http with --from")
			}
			var img model.Image
			var err error
			switch {
			case req.KernelPath == "":
				img, err = a.api().BuildImage(cmd.Context(), req, pp.event)
			case os.Geteuid() == 0:
				// Root's paths are root's: the daemon reads them.
				abs, aerr := filepath.Abs(req.KernelPath)
				if aerr != nil {
					return aerr
				}
				req.KernelPath = abs
				img, err = a.api().BuildImage(cmd.Context(), req, pp.event)
			default:
				// Read with this user's rights and sent: the daemon
				// opens no path a user names.
				f, ferr := openUserFile("kernel", req.KernelPath)
				if ferr != nil {
					return ferr
				}
				defer f.Close()
				req.KernelPath = ""
				img, err = a.api().BuildImageUpload(cmd.Context(), req, f, pp.event)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.Stdout, "image %s built: rootfs %s (%s), kernel %s\n", img.Name, img.RootfsPath, img.BuildSize, img.KernelPath)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Release, "release", "", "Debian release (default: this host's)")
	f.StringVar(&req.Mirror, "mirror", "", "Debian mirror URL (default: from this host's apt sources)")
	f.StringSliceVar(&packages, "packages", nil, "extra packages, comma-separated")
	f.BoolVar(&req.Docker, "docker", false, "install Docker in the image")
	f.StringVar(&req.KernelPath, "kernel", "", "use this vmlinux instead of the newest built kernel (read with your rights and sent to the daemon)")
	f.StringVar(&size, "size", "", "root filesystem size, e.g. 4G (default: fit the contents)")
	f.BoolVarP(&quiet, "quiet", "q", false, "only print the result")
	f.StringVar(&imp.from, "from", "", "build from a container image: a registry reference, an OCI or docker archive, or an OCI layout directory")
	f.StringVar(&imp.dockerfile, "dockerfile", "", "build this Dockerfile with buildah (or podman) as you, then import the result")
	f.StringVar(&imp.context, "context", "", "the Dockerfile's build context (default: its directory)")
	f.BoolVar(&imp.plainHTTP, "plain-http", false, "reach the --from registry without TLS")
	return cmd
}

func (a *App) imageRegisterCommand() *cobra.Command {
	var req api.ImageRegisterRequest
	var quiet bool
	cmd := &cobra.Command{
		Use:   "register NAME --kernel PATH --rootfs PATH",
		Short: "Register an existing kernel and root filesystem as an image",
		Long: `Register an existing kernel and root filesystem as an image. The kernel must be
an uncompressed ELF vmlinux (what Firecracker boots) or a bzImage (which only
banger-vmm-qemu boots; you get a warning).

banger reads the files with your rights and the daemon keeps its own copy of
each (sparse, or a reflink for root's files where the filesystem allows):
changing or removing the originals later changes nothing. Each path must name
a regular file itself, not a symbolic link. Image names are yours: another
user's image of the same name is another image.`,
		Example: `  banger image register mine --kernel ./vmlinux --rootfs ./rootfs.ext4`,
		Args:    exactArgs(1, "an image NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if err := model.ValidateImageName(req.Name); err != nil {
				return err
			}
			if req.KernelPath == "" || req.RootfsPath == "" {
				return usagef("image register needs --kernel and --rootfs")
			}
			if req.ModulesDir != "" {
				return usagef("--modules: banger does not use a separate modules directory (put the modules in the root filesystem)")
			}
			pp := &progressPrinter{w: a.Stderr, quiet: quiet}
			var resp api.ImageRegisterResponse
			var err error
			if os.Geteuid() == 0 {
				// Root's paths are root's: the daemon copies them.
				for _, p := range []*string{&req.KernelPath, &req.RootfsPath, &req.InitrdPath, &req.WorkSeed} {
					if *p == "" {
						continue
					}
					abs, err := filepath.Abs(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
				resp, err = a.api().RegisterImage(cmd.Context(), req)
			} else {
				resp, err = a.uploadImage(cmd, req, pp)
			}
			if err != nil {
				return err
			}
			for _, w := range resp.Warnings {
				fmt.Fprintf(a.Stderr, "warning: %s\n", w)
			}
			fmt.Fprintf(a.Stdout, "image %s registered (%s)\n", resp.Image.Name, model.ShortID(resp.Image.ID))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.KernelPath, "kernel", "", "kernel: ELF vmlinux (or bzImage)")
	f.StringVar(&req.RootfsPath, "rootfs", "", "root filesystem image (ext4)")
	f.StringVar(&req.InitrdPath, "initrd", "", "initrd (optional)")
	f.StringVar(&req.ModulesDir, "modules", "", "not supported: modules belong in the root filesystem")
	f.MarkHidden("modules")
	f.StringVar(&req.WorkSeed, "work-seed", "", "ext4 image each VM's /root disk starts from (optional)")
	f.BoolVar(&req.Docker, "docker", false, "the image has Docker")
	f.BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	return cmd
}

// uploadImage opens the image's files with this user's rights (every one
// before anything is sent) and streams them to the daemon.
func (a *App) uploadImage(cmd *cobra.Command, req api.ImageRegisterRequest, pp *progressPrinter) (api.ImageRegisterResponse, error) {
	var files []api.UploadFile
	defer func() {
		for _, f := range files {
			f.File.Close()
		}
	}()
	for _, p := range []struct{ flag, role, path string }{
		{"kernel", api.RoleKernel, req.KernelPath}, {"rootfs", api.RoleRootfs, req.RootfsPath},
		{"initrd", api.RoleInitrd, req.InitrdPath}, {"work-seed", api.RoleWorkSeed, req.WorkSeed},
	} {
		if p.path == "" {
			continue
		}
		f, err := openUserFile(p.flag, p.path)
		if err != nil {
			return api.ImageRegisterResponse{}, err
		}
		files = append(files, api.UploadFile{Role: p.role, File: f})
	}
	return a.api().UploadImage(cmd.Context(), api.ImageUploadRequest{Name: req.Name, Docker: req.Docker}, files, pp.event)
}

func (a *App) imageLsCommand() *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List images",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			imgs, err := a.api().ListImages(cmd.Context())
			if err != nil {
				return err
			}
			switch {
			case asJSON:
				return printJSON(a.Stdout, imgs)
			case quiet:
				for _, img := range imgs {
					fmt.Fprintln(a.Stdout, img.Name)
				}
				return nil
			}
			t := newTable(a.Stdout, "NAME", "ID", "MANAGED", "SIZE", "DOCKER", "OWNER", "CREATED")
			for _, img := range imgs {
				t.row(img.Name, model.ShortID(img.ID), yesNo(img.Managed), orDash(img.BuildSize), yesNo(img.Docker), fmt.Sprint(img.OwnerUID), ago(img.CreatedAt))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return cmd
}

func (a *App) imageInspectCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:               "inspect NAME",
		Short:             "Show an image's artifacts, sizes and SSH key",
		Args:              exactArgs(1, "an image NAME"),
		ValidArgsFunction: a.completeImages,
		RunE: func(cmd *cobra.Command, args []string) error {
			det, err := a.api().GetImage(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.Stdout, det)
			}
			w := a.Stdout
			fmt.Fprintf(w, "name:        %s\n", det.Name)
			fmt.Fprintf(w, "id:          %s\n", det.ID)
			fmt.Fprintf(w, "managed:     %s\n", yesNo(det.Managed))
			fmt.Fprintf(w, "docker:      %s\n", yesNo(det.Docker))
			fmt.Fprintf(w, "kernel:      %s (%s)\n", det.KernelPath, det.KernelFormat)
			fmt.Fprintf(w, "owner uid:   %d\n", det.OwnerUID)
			fmt.Fprintf(w, "created:     %s\n", det.CreatedAt.Local().Format("2006-01-02 15:04:05"))
			key := "not seeded"
			if det.SeededSSHPublicKeyFingerprint != "" {
				key = det.SeededSSHPublicKeyFingerprint
				if det.SSHKeyMatches != nil {
					if *det.SSHKeyMatches {
						key += " (matches the daemon's key)"
					} else {
						key += " (does NOT match the daemon's current key: rebuild the image)"
					}
				}
			}
			fmt.Fprintf(w, "ssh key:     %s\n", key)
			printImageSource(w, det.Image)
			fmt.Fprintf(w, "used by:     %s\n", orDash(strings.Join(det.UsedBy, ", ")))
			printWarm(w, det.Warm)
			if det.Note != "" {
				fmt.Fprintf(w, "note:        %s\n", det.Note)
			}
			fmt.Fprintln(w, "artifacts:")
			t := newTable(w, "  ROLE", "SIZE", "ON DISK", "PATH")
			for _, art := range det.Artifacts {
				if art.Missing {
					t.row("  "+art.Role, "MISSING", "-", art.Path)
					continue
				}
				t.row("  "+art.Role, humanBytes(art.SizeBytes), humanBytes(art.AllocatedBytes), art.Path)
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *App) imageRmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "rm NAME...",
		Aliases:           []string{"remove"},
		Short:             "Remove images and their warm states (refused while a VM uses them)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeImages,
		RunE: func(cmd *cobra.Command, args []string) error {
			var firstErr error
			for _, name := range args {
				if err := a.api().DeleteImage(cmd.Context(), name); err != nil {
					fmt.Fprintf(a.Stderr, "banger: %v\n", err)
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				fmt.Fprintf(a.Stdout, "image %s removed\n", name)
			}
			if firstErr != nil {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// completeImages completes image names from the daemon.
func (a *App) completeImages(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	imgs, err := a.api().ListImages(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, img := range imgs {
		if strings.HasPrefix(img.Name, toComplete) {
			out = append(out, img.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
