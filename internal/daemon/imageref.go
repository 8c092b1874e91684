package daemon

import (
	"fmt"
	"os/user"
	"strconv"
	"strings"

	"banger/internal/api"
	"banger/internal/model"
)

// Image names are per owner. A bare name resolves to the caller's own
// image, else to root's (root's images are shared with everyone); root
// resolves a bare name to its own images only, so no user can slip an
// image under root's `vm create` by taking a name first. OWNER/NAME (a
// user name or a uid) reaches another owner's image, for those who may
// see it: its owner, root and admins, and everyone for root's.

// imageRef is an image reference as given: NAME, an image ID, or
// OWNER/NAME.
type imageRef struct {
	owner string // "" unless qualified
	name  string
}

// parseImageRef splits a reference.
func parseImageRef(ref string) (imageRef, error) {
	owner, name, qualified := strings.Cut(ref, "/")
	if !qualified {
		return imageRef{name: ref}, nil
	}
	if owner == "" || name == "" || strings.Contains(name, "/") {
		return imageRef{}, model.Errorf(model.EINVALID, "image %q: use NAME or OWNER/NAME (a user name or uid, then the image name)", ref)
	}
	return imageRef{owner: owner, name: name}, nil
}

// uidOf turns the owner part of a reference into a uid: a number is a
// uid; a name is looked up.
type uidOf func(owner string) (int, bool)

// hostUID looks owner up in the host's user database.
func hostUID(owner string) (int, bool) {
	if n, err := strconv.Atoi(owner); err == nil && n >= 0 {
		return n, true
	}
	u, err := user.Lookup(owner)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(u.Uid)
	return n, err == nil
}

// imageVisible reports whether c may see and use img: its own, root's
// (shared), and everything for root and admins.
func imageVisible(c api.Caller, img model.Image) bool {
	return c.Owns(img.OwnerUID) || img.OwnerUID == 0
}

// resolveImage picks the image ref means to c among candidates (the
// images named ref's name, or whose ID is ref). An image c may not see
// is "not found", exactly like one that does not exist.
func resolveImage(c api.Caller, ref string, candidates []model.Image, lookup uidOf) (model.Image, error) {
	r, err := parseImageRef(ref)
	if err != nil {
		return model.Image{}, err
	}
	notFound := model.Errorf(model.ENOTFOUND, "image %q not found; see `banger image ls`", ref)
	if r.owner != "" {
		uid, ok := lookup(r.owner)
		if !ok {
			return model.Image{}, notFound
		}
		for _, img := range candidates {
			if img.OwnerUID == uid && img.Name == r.name && imageVisible(c, img) {
				return img, nil
			}
		}
		return model.Image{}, notFound
	}
	for _, img := range candidates {
		if img.ID == ref && imageVisible(c, img) {
			return img, nil
		}
	}
	var shared *model.Image
	var others []model.Image
	for i, img := range candidates {
		if img.Name != r.name {
			continue
		}
		switch {
		case img.OwnerUID == c.UID:
			return img, nil
		case img.OwnerUID == 0:
			shared = &candidates[i]
		case c.Privileged():
			others = append(others, img)
		}
	}
	if shared != nil {
		return *shared, nil
	}
	if len(others) > 0 {
		// Root and admins see everyone's images: say how to name one.
		var refs []string
		for _, img := range others {
			refs = append(refs, fmt.Sprintf("%d/%s", img.OwnerUID, img.Name))
		}
		return model.Image{}, model.Errorf(model.ENOTFOUND, "you have no image %q; other users do: name one as %s", ref, strings.Join(refs, " or "))
	}
	return model.Image{}, notFound
}

// defaultCandidates are the images a create without --image may fall
// back to when it has one choice: those a bare name would resolve to
// (the caller's and root's; for root, its own).
func defaultCandidates(c api.Caller, all []model.Image) []model.Image {
	var out []model.Image
	for _, img := range all {
		if img.OwnerUID == c.UID || img.OwnerUID == 0 {
			out = append(out, img)
		}
	}
	return out
}
