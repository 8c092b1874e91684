package daemon

// FaultCell is one cell of the end-to-end fault matrix: the daemon is
// killed at CrashAt while it runs Op on a VM that is running first when
// NeedsRunning (stopped otherwise), then restarted.
type FaultCell struct {
	Op           string
	CrashAt      string
	NeedsRunning bool
	// NeedsSuspended: the VM is suspended first (resume, and the stop of
	// a suspended VM).
	NeedsSuspended bool
}

// FaultMatrix lists every crash point of the lifecycle once, with an
// operation that passes through it: the start steps under start, the stop
// and cleanup steps under stop, the kill steps under kill, the delete
// steps under rm, the suspend steps under suspend, the resume steps under
// resume (a start of a suspended VM) and the dropping of a saved state
// under stop of a suspended VM. It is built from the step lists themselves, so a step
// added later is in the matrix without editing the test.
func FaultMatrix() []FaultCell {
	d := &Daemon{}
	var cells []FaultCell
	seen := map[string]bool{}
	add := func(op string, running bool, names []string) {
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				cells = append(cells, FaultCell{Op: op, CrashAt: n, NeedsRunning: running})
			}
		}
	}
	add("start", false, stepNames(d.startSteps()))
	add("stop", true, stepNames(d.stopSteps("stop")))
	add("kill", true, stepNames(d.stopSteps("kill")))
	add("rm", false, stepNames(d.deleteSteps()))
	add("suspend", true, stepNames(d.suspendSteps()))
	add("fork", true, stepNames(d.forkSteps()))
	// `image warm` of the VM's image, and a create from its warm state.
	add("warm", false, stepNames(d.warmSteps()))
	add("warm-create", false, stepNames(d.warmCreateSteps()))
	n := len(cells)
	add("resume", false, stepNames(d.resumeSteps()))
	add("stop", false, stepNames(d.discardSteps()))
	for i := n; i < len(cells); i++ {
		cells[i].NeedsSuspended = true
	}
	return cells
}
