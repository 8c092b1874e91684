package store

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkListVMs reads 1,000 VM rows (vm ls at issue 18's scale).
func BenchmarkListVMs(b *testing.B) {
	ctx := context.Background()
	db, err := Open(ctx, b.TempDir()+"/banger.db")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	img := testImage("debian")
	if err := db.CreateImage(ctx, img); err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		if err := db.CreateVM(ctx, testVM(fmt.Sprintf("vm-%d", i), img.ID, fmt.Sprintf("172.16.%d.%d", i/250, i%250+2))); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		vms, err := db.ListVMs(ctx)
		if err != nil || len(vms) != 1000 {
			b.Fatal(len(vms), err)
		}
	}
}
