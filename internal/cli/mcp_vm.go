package cli

import (
	"context"
	"fmt"
	"time"

	"banger/internal/api"
	"banger/internal/model"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpVM is a VM as the tools show it: what an agent needs to use it.
type mcpVM struct {
	Name          string     `json:"name"`
	ID            string     `json:"id"`
	State         string     `json:"state" jsonschema:"created, running, stopped, suspended (saved; vm_start or exec resumes it) or error"`
	Image         string     `json:"image,omitempty"`
	GuestIP       string     `json:"guest_ip,omitempty"`
	DNSName       string     `json:"dns_name,omitempty"`
	VCPUs         int        `json:"vcpus"`
	MemoryMiB     int        `json:"memory_mib"`
	WorkDiskBytes int64      `json:"work_disk_bytes" jsonschema:"size of the disk mounted at /root"`
	NAT           bool       `json:"nat" jsonschema:"whether the VM reaches the internet through NAT"`
	CreatedAt     time.Time  `json:"created_at"`
	AutoStopAt    *time.Time `json:"auto_stop_at,omitempty" jsonschema:"when the idle auto-stop will stop the VM if nothing uses it"`
	LastError     string     `json:"last_error,omitempty"`
}

func vmSummary(v api.VMView) mcpVM {
	return mcpVM{
		Name: v.Name, ID: v.ID, State: string(v.State), Image: v.ImageName,
		GuestIP: v.Runtime.GuestIP, DNSName: v.Runtime.DNSName,
		VCPUs: v.Spec.VCPUCount, MemoryMiB: v.Spec.MemoryMiB, WorkDiskBytes: v.Spec.WorkDiskSizeBytes, NAT: v.Spec.NATEnabled,
		CreatedAt: v.CreatedAt, AutoStopAt: v.AutoStopAt, LastError: v.Runtime.LastError,
	}
}

type vmCreateIn struct {
	Name        string `json:"name" jsonschema:"the new VM's name: a DNS label, 1-63 lowercase letters, digits or '-'"`
	Image       string `json:"image,omitempty" jsonschema:"the image to boot (default: the daemon's default image)"`
	VCPUs       int    `json:"vcpus,omitempty" jsonschema:"number of vCPUs, 1-32 (default from the daemon, usually 2)"`
	Memory      string `json:"memory,omitempty" jsonschema:"memory such as 2G or 512M (a bare number is MiB), at least 128M (default usually 2G)"`
	DiskSize    string `json:"disk_size,omitempty" jsonschema:"size of the work disk mounted at /root, such as 8G (at most 128G)"`
	OverlaySize string `json:"overlay_size,omitempty" jsonschema:"size of the system disk (/), such as 8G (at most 128G)"`
	NAT         *bool  `json:"nat,omitempty" jsonschema:"give the VM outbound internet access through NAT (default from the daemon, usually off)"`
	Egress      string `json:"egress,omitempty" jsonschema:"where the guest may connect: open, none, or allow=LIST of domains (*.example.com), IPs and CIDRs, comma-separated"`
	AutoStop    string `json:"auto_stop,omitempty" jsonschema:"stop the VM after this much idle time (30m, 2h), never, or default"`
	NoStart     bool   `json:"no_start,omitempty" jsonschema:"only create the VM; start it later with vm_start"`
}

type vmRefIn struct {
	Name string `json:"name" jsonschema:"the VM's name (or ID)"`
}

type vmRmIn struct {
	Name  string `json:"name" jsonschema:"the VM's name (or ID)"`
	Force bool   `json:"force,omitempty" jsonschema:"stop a running VM first, and drop workspace work not fetched yet"`
}

type vmOut struct {
	VM   mcpVM  `json:"vm"`
	Hint string `json:"hint,omitempty" jsonschema:"what to do next"`
}

type vmListOut struct {
	VMs []mcpVM `json:"vms"`
}

type vmInspectOut struct {
	VM api.VMView `json:"vm" jsonschema:"everything the daemon knows of the VM, as banger vm inspect --json prints it"`
}

type vmRmOut struct {
	Removed string `json:"removed"`
}

func (s *mcpServer) addVMTools(srv *mcp.Server) {
	yes, no := true, false
	addTool(srv, &mcp.Tool{
		Name:  "vm_create",
		Title: "Create a VM",
		Description: "Create a Linux VM (Debian, you are root) and boot it, waiting until it answers: it takes tens of seconds and reports progress. " +
			"It gets a copy-on-write system disk, a persistent work disk at /root, an IP, and your SSH keys. Then run commands in it with exec.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &no, OpenWorldHint: &no},
	}, func(sc *jsonschema.Schema) {
		bounds(sc, "vcpus", 1, 32, 0)
		sc.Properties["egress"].Pattern = `^(open|none|allow=.+)$`
	}, s.vmCreate)
	addTool(srv, &mcp.Tool{
		Name:        "vm_list",
		Title:       "List VMs",
		Description: "List your VMs with their state, IP and size.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &no},
	}, nil, func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (vmListOut, error) {
		vms, err := s.client.ListVMs(ctx)
		out := vmListOut{VMs: []mcpVM{}}
		for _, v := range vms {
			out.VMs = append(out.VMs, vmSummary(v))
		}
		return out, err
	})
	addTool(srv, &mcp.Tool{
		Name:        "vm_inspect",
		Title:       "Inspect a VM",
		Description: "Show everything banger knows about one VM: spec, runtime (IP, state, last error), stats.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &no},
	}, nil, func(ctx context.Context, _ *mcp.CallToolRequest, in vmRefIn) (vmInspectOut, error) {
		v, err := s.client.GetVM(ctx, in.Name)
		return vmInspectOut{VM: v}, err
	})
	addTool(srv, &mcp.Tool{
		Name:        "vm_start",
		Title:       "Start a VM",
		Description: "Start a stopped VM and wait until it answers (tens of seconds; reports progress), or resume a suspended one where it was. /root and changes to the system disk are kept across stops.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &no, IdempotentHint: false, OpenWorldHint: &no},
	}, nil, func(ctx context.Context, req *mcp.CallToolRequest, in vmRefIn) (vmOut, error) {
		v, err := s.client.StartVM(ctx, in.Name, newProgress(ctx, req).event)
		return vmOut{VM: vmSummary(v)}, err
	})
	addTool(srv, &mcp.Tool{
		Name:        "vm_stop",
		Title:       "Stop a VM",
		Description: "Stop a running VM gracefully (its disks are kept; start it again with vm_start). Workspace work in it is captured first.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &no, IdempotentHint: true, OpenWorldHint: &no},
	}, nil, func(ctx context.Context, req *mcp.CallToolRequest, in vmRefIn) (vmOut, error) {
		v, err := s.client.StopVM(ctx, in.Name, newProgress(ctx, req).event)
		return vmOut{VM: vmSummary(v)}, err
	})
	addTool(srv, &mcp.Tool{
		Name:  "vm_rm",
		Title: "Remove a VM",
		Description: "Remove a VM and its disks for good. A running VM, or one holding workspace work not fetched yet, is refused unless force is true " +
			"(fetch the work first with workspace_fetch).",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &yes, IdempotentHint: false, OpenWorldHint: &no},
	}, nil, func(ctx context.Context, req *mcp.CallToolRequest, in vmRmIn) (vmRmOut, error) {
		err := s.client.DeleteVM(ctx, in.Name, api.VMDeleteOptions{Force: in.Force}, newProgress(ctx, req).event)
		return vmRmOut{Removed: in.Name}, err
	})
	addTool(srv, &mcp.Tool{
		Name:  "vm_suspend",
		Title: "Suspend a VM",
		Description: "Suspend a running VM: its memory and device state are saved on disk and it stops using CPU and memory (reports progress). " +
			"vm_start resumes it where it was, processes included; exec, read_file, write_file, list_dir and the workspace tools wake it by themselves.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &no, IdempotentHint: false, OpenWorldHint: &no},
	}, nil, func(ctx context.Context, req *mcp.CallToolRequest, in vmRefIn) (vmOut, error) {
		v, err := s.client.SuspendVM(ctx, in.Name, newProgress(ctx, req).event)
		if err != nil {
			return vmOut{}, err
		}
		return vmOut{VM: vmSummary(v), Hint: fmt.Sprintf("vm %s is %s; vm_start (or any exec) resumes it", v.Name, v.State)}, nil
	})
	addTool(srv, &mcp.Tool{
		Name:  "vm_fork",
		Title: "Fork a VM",
		Description: "Make running copies of a running VM, processes, files and workspaces included, to try several approaches at once (reports progress). " +
			"Give names, or count for children named <name>-1, <name>-2, ... (at most 16; neither makes one). The source pauses for about a second and runs on. " +
			"Each child is its own machine (IP, hostname, host key, machine-id) with its workspaces on branch banger/<child>: fetch each with workspace_fetch on the child.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &no, IdempotentHint: false, OpenWorldHint: &no},
	}, nil, func(ctx context.Context, req *mcp.CallToolRequest, in vmForkIn) (vmForkOut, error) {
		for _, n := range in.Names {
			if err := model.ValidateVMName(n); err != nil {
				return vmForkOut{}, err
			}
		}
		if in.Count < 0 || in.Count > model.MaxForkChildren {
			return vmForkOut{}, model.Errorf(model.EINVALID, "count %d: use 1 to %d", in.Count, model.MaxForkChildren)
		}
		kids, err := s.client.ForkVM(ctx, in.Name, model.VMForkRequest{Names: in.Names, Count: in.Count}, newProgress(ctx, req).event)
		if err != nil {
			return vmForkOut{}, err
		}
		out := vmForkOut{Hint: "each child runs on its own; exec in it by name, fetch its work with workspace_fetch"}
		for _, k := range kids {
			out.Children = append(out.Children, vmSummary(k))
		}
		return out, nil
	})
}

type vmForkIn struct {
	Name  string   `json:"name" jsonschema:"the running VM to fork (name or ID)"`
	Names []string `json:"names,omitempty" jsonschema:"the children's names"`
	Count int      `json:"count,omitempty" jsonschema:"how many children, named <name>-1, <name>-2, ... (when names is not given)"`
}

type vmForkOut struct {
	Children []mcpVM `json:"children"`
	Hint     string  `json:"hint,omitempty" jsonschema:"what to do next"`
}

func (s *mcpServer) vmCreate(ctx context.Context, req *mcp.CallToolRequest, in vmCreateIn) (vmOut, error) {
	if err := model.ValidateVMName(in.Name); err != nil {
		return vmOut{}, err
	}
	r := model.VMCreateRequest{Name: in.Name, ImageName: in.Image, VCPUCount: in.VCPUs, NoStart: in.NoStart}
	if in.VCPUs != 0 {
		if err := model.ValidateVCPUCount(in.VCPUs); err != nil {
			return vmOut{}, fmt.Errorf("vcpus: %w", err)
		}
	}
	var err error
	if in.Memory != "" {
		if r.MemoryMiB, err = parseMemory(in.Memory); err != nil {
			return vmOut{}, err
		}
	}
	if in.DiskSize != "" {
		if r.WorkDiskSizeBytes, err = parseDisk("disk-size", in.DiskSize); err != nil {
			return vmOut{}, err
		}
	}
	if in.OverlaySize != "" {
		if r.SystemOverlaySizeByte, err = parseDisk("overlay-size", in.OverlaySize); err != nil {
			return vmOut{}, err
		}
	}
	if in.NAT != nil {
		r.NATEnabled, r.NATSet = *in.NAT, true
	}
	if in.Egress != "" {
		p, err := parseEgress(in.Egress)
		if err != nil {
			return vmOut{}, err
		}
		r.Egress = &p
	}
	if in.AutoStop != "" {
		secs, err := parseAutoStop(in.AutoStop)
		if err != nil {
			return vmOut{}, err
		}
		if secs >= 0 {
			r.AutoStopAfterSeconds = &secs
		}
	}
	p := newProgress(ctx, req)
	// The user's banger key is made once (calls run concurrently), then
	// authorized with the user's other keys.
	if _, err := s.userSigner(); err != nil {
		p.note(fmt.Sprintf("warning: your banger key: %v", err))
	}
	keys, err := s.app.userPublicKeys()
	if err != nil {
		p.note(fmt.Sprintf("warning: no SSH key of yours will be authorized in the VM: %v", err))
	}
	r.SSHPublicKeys = keys
	v, err := s.app.createWithFileSync(ctx, r, p.event)
	if err != nil {
		return vmOut{}, err
	}
	out := vmOut{VM: vmSummary(v)}
	if v.State == model.VMStateRunning {
		out.Hint = fmt.Sprintf("vm %s is running; run commands in it with exec {\"vm\": %q, ...}", v.Name, v.Name)
	} else {
		out.Hint = fmt.Sprintf("vm %s is %s; start it with vm_start", v.Name, v.State)
	}
	return out, nil
}
