//go:build !amd64

package qemuvmm

func rdtsc() uint64 { return 0 }

const haveTSC = false
