package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"banger/internal/model"
)

func TestEnsureSSHKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "id_ed25519")
	pub, fp, err := EnsureSSHKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pub, "ssh-ed25519 ") || !strings.HasPrefix(fp, "SHA256:") {
		t.Errorf("pub %q, fingerprint %q", pub, fp)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v, %v; want mode 0600", fi, err)
	}
	b, _ := os.ReadFile(path)
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatalf("private key does not parse: %v", err)
	}
	if got := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))); got != pub {
		t.Errorf("private key's public half %q, want %q", got, pub)
	}
	pubFile, _ := os.ReadFile(path + ".pub")
	if !strings.HasPrefix(string(pubFile), pub) {
		t.Errorf(".pub = %q, want %q", pubFile, pub)
	}

	// A second call reads the same key, and restores a lost .pub.
	os.Remove(path + ".pub")
	pub2, fp2, err := EnsureSSHKey(path)
	if err != nil || pub2 != pub || fp2 != fp {
		t.Errorf("second call = %q, %q, %v; want the same key", pub2, fp2, err)
	}
	if _, err := os.Stat(path + ".pub"); err != nil {
		t.Errorf(".pub not restored: %v", err)
	}
	if got, err := Fingerprint(pub); err != nil || got != fp {
		t.Errorf("Fingerprint = %q, %v; want %q", got, err, fp)
	}

	// OpenSSH agrees with both the key file and the fingerprint.
	if _, err := exec.LookPath("ssh-keygen"); err == nil {
		out, err := exec.Command("ssh-keygen", "-l", "-f", path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), fp) {
			t.Errorf("ssh-keygen -l: %v: %s; want %s", err, out, fp)
		}
	}
}

func TestEnsureSSHKeyCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id")
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureSSHKey(path); err == nil {
		t.Error("EnsureSSHKey(garbage) = nil error")
	}
	if b, _ := os.ReadFile(path); string(b) != "garbage" {
		t.Error("a key that does not parse was overwritten")
	}
}

func TestFingerprintInvalid(t *testing.T) {
	if _, err := Fingerprint("not a key"); model.ErrorCode(err) != model.EINVALID {
		t.Errorf("Fingerprint(garbage) error = %v, want EINVALID", err)
	}
}
