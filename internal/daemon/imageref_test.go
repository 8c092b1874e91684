package daemon

import (
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/model"
)

func TestResolveImage(t *testing.T) {
	img := func(id, name string, owner int) model.Image {
		return model.Image{ID: id, Name: name, OwnerUID: owner}
	}
	rootDefault := img("r1", "default", 0)
	aliceDefault := img("a1", "default", 1000)
	malloryDefault := img("m1", "default", 1001)
	aliceOnly := img("a2", "tools", 1000)
	all := []model.Image{rootDefault, aliceDefault, malloryDefault, aliceOnly}
	lookup := func(owner string) (int, bool) {
		switch owner {
		case "root", "0":
			return 0, true
		case "alice", "1000":
			return 1000, true
		case "mallory", "1001":
			return 1001, true
		}
		return 0, false
	}
	root := api.Caller{UID: 0}
	alice := api.Caller{UID: 1000}
	mallory := api.Caller{UID: 1001}
	bob := api.Caller{UID: 1002}
	admin := api.Caller{UID: 1003, Admin: true}
	tests := []struct {
		name   string
		c      api.Caller
		ref    string
		want   string // image ID, or "" for an error
		code   string
		saying string
	}{
		{"root's bare name is root's, never a squatter's", root, "default", "r1", "", ""},
		{"a user's bare name is its own first", alice, "default", "a1", "", ""},
		{"a user without one gets root's", bob, "default", "r1", "", ""},
		{"root reaches a user's image by uid", root, "1001/default", "m1", "", ""},
		{"root reaches a user's image by name", root, "mallory/default", "m1", "", ""},
		{"root's bare name never falls to a user's", root, "tools", "", model.ENOTFOUND, "1000/tools"},
		{"an admin names others' images like root", admin, "alice/tools", "a2", "", ""},
		{"an admin's bare name: root's", admin, "default", "r1", "", ""},
		{"a user asking for another's image", mallory, "alice/tools", "", model.ENOTFOUND, "not found"},
		{"a user asking for another's by bare name", mallory, "tools", "", model.ENOTFOUND, "not found"},
		{"a user naming root's explicitly", mallory, "root/default", "r1", "", ""},
		{"a user naming itself", alice, "1000/default", "a1", "", ""},
		{"an ID of one's own", alice, "a2", "a2", "", ""},
		{"another user's ID is not found", mallory, "a2", "", model.ENOTFOUND, "not found"},
		{"an unknown owner", alice, "nosuch/default", "", model.ENOTFOUND, "not found"},
		{"a malformed reference", alice, "a/b/c", "", model.EINVALID, "OWNER/NAME"},
		{"an empty owner", alice, "/default", "", model.EINVALID, "OWNER/NAME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveImage(tt.c, tt.ref, all, lookup)
			if tt.want != "" {
				if err != nil || got.ID != tt.want {
					t.Fatalf("resolveImage(%d, %q) = %q, %v; want %q", tt.c.UID, tt.ref, got.ID, err, tt.want)
				}
				return
			}
			if err == nil || model.ErrorCode(err) != tt.code || !strings.Contains(err.Error(), tt.saying) {
				t.Fatalf("resolveImage(%d, %q) = %q, %v; want %s saying %q", tt.c.UID, tt.ref, got.ID, err, tt.code, tt.saying)
			}
		})
	}
	// A user learns nothing of others' names: the refusal is the same as
	// for a name nobody has.
	_, e1 := resolveImage(mallory, "tools", all, lookup)
	_, e2 := resolveImage(mallory, "nothing", all, lookup)
	if strings.ReplaceAll(e1.Error(), "tools", "X") != strings.ReplaceAll(e2.Error(), "nothing", "X") {
		t.Errorf("an existing private name reads differently: %q vs %q", e1, e2)
	}
}

func TestDefaultCandidates(t *testing.T) {
	all := []model.Image{{ID: "r", OwnerUID: 0}, {ID: "a", OwnerUID: 1000}, {ID: "m", OwnerUID: 1001}}
	ids := func(imgs []model.Image) string {
		var s []string
		for _, i := range imgs {
			s = append(s, i.ID)
		}
		return strings.Join(s, ",")
	}
	if got := ids(defaultCandidates(api.Caller{UID: 0}, all)); got != "r" {
		t.Errorf("root's candidates %q; want only root's", got)
	}
	if got := ids(defaultCandidates(api.Caller{UID: 1000}, all)); got != "r,a" {
		t.Errorf("alice's candidates %q", got)
	}
	if got := ids(defaultCandidates(api.Caller{UID: 1003, Admin: true}, all)); got != "r" {
		t.Errorf("an admin's candidates %q; want root's (never another user's)", got)
	}
}
