package image

import (
	"testing"

	"banger/internal/model"
)

func TestValidateMirror(t *testing.T) {
	good := []string{
		"http://deb.debian.org/debian",
		"https://deb.example.org/debian/",
		"http://10.0.0.5:8080/debian",
		"http://[2001:db8::1]/debian",
		"http://mirror.example/debian-archive/~x/a+b_c.d",
	}
	for _, m := range good {
		if err := ValidateMirror(m); err != nil {
			t.Errorf("ValidateMirror(%q) = %v", m, err)
		}
	}
	bad := []string{
		"",
		"-o/tmp/x",
		"--foreign",
		"ftp://deb.example/debian",
		"file:///srv/debian",
		"http:deb.example/debian",
		"http://user:secret@deb.example/debian",
		"http://token@deb.example/debian",
		"http://deb.example/debian?x=1",
		"http://deb.example/debian#frag",
		"http://deb.example/de%62ian",
		"http://deb.example/../etc",
		"http://deb.example/debian main contrib",
		"http://deb.example/debian\nhttp://evil/",
		"http://deb.example/debian\tx",
		"http://deb.example/$(reboot)",
		"http://deb.example/`id`",
		"http://-deb.example/debian",
		"http://deb_ex.example/debian",
		"http://deb.example:0/debian",
		"http://deb.example:99999/debian",
		"http://deb.example:/debian",
		"http:///debian",
		"http://déb.example/debian",
		"http://deb.example/" + string(make([]byte, 300)),
	}
	for _, m := range bad {
		if err := ValidateMirror(m); model.ErrorCode(err) != model.EINVALID {
			t.Errorf("ValidateMirror(%q) = %v; want EINVALID", m, err)
		}
	}
}

func TestMirrorIsLocal(t *testing.T) {
	for m, want := range map[string]bool{
		"http://127.0.0.1/debian":      true,
		"http://127.9.9.9:3142/debian": true,
		"http://localhost/debian":      true,
		"http://a.localhost/debian":    true,
		"http://[::1]/debian":          true,
		"http://169.254.169.254/x":     true,
		"http://0.0.0.0/debian":        true,
		"http://deb.example/debian":    false,
		"http://10.0.0.5/debian":       false,
	} {
		if got := MirrorIsLocal(m); got != want {
			t.Errorf("MirrorIsLocal(%q) = %v, want %v", m, got, want)
		}
	}
}
