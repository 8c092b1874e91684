package qemuvmm

// rdtsc returns the CPU's time-stamp counter.
func rdtsc() uint64

const haveTSC = true
