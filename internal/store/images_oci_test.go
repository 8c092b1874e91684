package store

import (
	"context"
	"reflect"
	"testing"

	"banger/internal/model"
)

// TestImageOCIRoundTrip: an image built from a container image keeps its
// source and session config; others have neither.
func TestImageOCIRoundTrip(t *testing.T) {
	ctx := context.Background()
	db, _ := openTest(t)
	img := testImage("app")
	img.Source = &model.ImageSource{Kind: "registry", Reference: "registry.test/app:1", ManifestDigest: "sha256:aa", ChainID: "sha256:bb", Layers: 3, Init: "banger-init"}
	img.Config = &model.ImageConfig{Env: []string{"PATH=/usr/bin"}, WorkingDir: "/app", User: "node"}
	if err := db.CreateImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	got, err := db.GetImage(ctx, img.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Source, img.Source) || !reflect.DeepEqual(got.Config, img.Config) {
		t.Errorf("got %+v %+v", got.Source, got.Config)
	}
	got.Config.User = "root"
	if err := db.UpdateImage(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, _ := db.GetImage(ctx, img.ID); again.Config.User != "root" {
		t.Errorf("update lost the config: %+v", again.Config)
	}
	plain := testImage("plain")
	if err := db.CreateImage(ctx, plain); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.GetImage(ctx, plain.ID); got.Source != nil || got.Config != nil {
		t.Errorf("a plain image has %+v %+v", got.Source, got.Config)
	}
}
