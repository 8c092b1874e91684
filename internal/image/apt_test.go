package image

import (
	"reflect"
	"testing"

	"banger/internal/model"
)

func TestParseOSRelease(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
		wantErr string
	}{
		{"bookworm", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n", "bookworm", ""},
		{"quoted", "ID=\"debian\"\nVERSION_CODENAME='trixie'\n", "trixie", ""},
		{"ubuntu", "ID=ubuntu\nVERSION_CODENAME=noble\n", "", model.EUNAVAILABLE},
		{"no codename", "ID=debian\nVERSION_ID=\"13\"\n", "", model.EUNAVAILABLE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOSRelease(tt.content)
			if code := model.ErrorCode(err); code != tt.wantErr {
				t.Fatalf("error code = %q (%v), want %q", code, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("release = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseSourcesList(t *testing.T) {
	content := `# main archive
deb http://archive.example/debian bookworm main contrib
deb-src http://archive.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] https://mirror.example/debian/ bookworm-updates main # trailing comment
  # deb http://disabled.example/debian bookworm main
deb [ trusted=yes ] file:/srv/repo ./
bogus line
`
	got := parseSourcesList(content)
	want := []aptSource{
		{Type: "deb", URI: "http://archive.example/debian", Suite: "bookworm", Components: []string{"main", "contrib"}, Enabled: true},
		{Type: "deb-src", URI: "http://archive.example/debian", Suite: "bookworm", Components: []string{"main"}, Enabled: true},
		{Type: "deb", URI: "https://mirror.example/debian/", Suite: "bookworm-updates", Components: []string{"main"}, SignedBy: "/usr/share/keyrings/debian-archive-keyring.gpg", Enabled: true},
		{Type: "deb", URI: "file:/srv/repo", Suite: "./", Components: []string{}, Enabled: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseSourcesList =\n%+v\nwant\n%+v", got, want)
	}
}

func TestParseDeb822Sources(t *testing.T) {
	content := `Types: deb deb-src
# a comment inside the stanza
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://archive.example/debian-security
Suites: bookworm-security
Components: main
Enabled: no
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----
`
	got := parseDeb822Sources(content)
	key := "/usr/share/keyrings/debian-archive-keyring.gpg"
	want := []aptSource{
		{Type: "deb", URI: "http://archive.example/debian", Suite: "bookworm", Components: []string{"main"}, SignedBy: key, Enabled: true},
		{Type: "deb", URI: "http://archive.example/debian", Suite: "bookworm-updates", Components: []string{"main"}, SignedBy: key, Enabled: true},
		{Type: "deb-src", URI: "http://archive.example/debian", Suite: "bookworm", Components: []string{"main"}, SignedBy: key, Enabled: true},
		{Type: "deb-src", URI: "http://archive.example/debian", Suite: "bookworm-updates", Components: []string{"main"}, SignedBy: key, Enabled: true},
		{Type: "deb", URI: "http://archive.example/debian-security", Suite: "bookworm-security", Components: []string{"main"},
			SignedBy: "-----BEGIN PGP PUBLIC KEY BLOCK-----\n.\n-----END PGP PUBLIC KEY BLOCK-----", Enabled: false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseDeb822Sources =\n%+v\nwant\n%+v", got, want)
	}
}

func TestPickMirror(t *testing.T) {
	deb822 := func(s string) []aptSource { return parseDeb822Sources(s) }
	oneLine := func(s string) []aptSource { return parseSourcesList(s) }
	tests := []struct {
		name    string
		sources []aptSource
		release string
		want    string
		wantErr string
	}{
		{
			name: "deb822 main suite after updates and security",
			sources: deb822(`Types: deb
URIs: http://archive.example/debian
Suites: bookworm-updates bookworm
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
`),
			release: "bookworm",
			want:    "http://archive.example/debian",
		},
		{
			name: "one-line: security, updates, backports, a third-party repo named like the release, then the archive",
			sources: oneLine(`deb http://security.example/debian-security bookworm-security main
deb http://archive.example/debian bookworm-updates main
deb http://archive.example/debian bookworm-backports main
deb https://vendor.example/debian/12/prod bookworm main
deb [arch=amd64] https://containers.example/linux/debian bookworm stable
deb-src http://archive.example/debian bookworm main
deb http://archive.example/debian/ bookworm main non-free-firmware
`),
			release: "bookworm",
			want:    "http://archive.example/debian",
		},
		{
			name:    "a proxy path ending in /debian",
			sources: oneLine("deb http://proxy.example:3142/archive.example/debian trixie main\n"),
			release: "trixie",
			want:    "http://proxy.example:3142/archive.example/debian",
		},
		{
			name: "an odd path signed by the Debian archive keyring",
			sources: deb822(`Types: deb
URIs: https://mirror.example/pub/os/deb
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`),
			release: "bookworm",
			want:    "https://mirror.example/pub/os/deb",
		},
		{
			name: "disabled stanza",
			sources: deb822(`Types: deb
URIs: http://archive.example/debian
Suites: bookworm
Components: main
Enabled: no
`),
			release: "bookworm",
			wantErr: model.EUNAVAILABLE,
		},
		{
			name:    "other release only",
			sources: oneLine("deb http://archive.example/debian bullseye main\n"),
			release: "bookworm",
			wantErr: model.EUNAVAILABLE,
		},
		{
			name:    "no main component",
			sources: oneLine("deb http://archive.example/debian bookworm contrib\n"),
			release: "bookworm",
			wantErr: model.EUNAVAILABLE,
		},
		{
			name:    "cdrom",
			sources: oneLine("deb cdrom:[Debian 12]/debian bookworm main\n"),
			release: "bookworm",
			wantErr: model.EUNAVAILABLE,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pickMirror(tt.sources, tt.release)
			if code := model.ErrorCode(err); code != tt.wantErr {
				t.Fatalf("error code = %q (%v), want %q", code, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("mirror = %q, want %q", got, tt.want)
			}
		})
	}
}
