package image

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"banger/internal/fsutil"
	"banger/internal/model"
)

// EnsureSSHKey returns the public key (authorized_keys format) and its
// SHA256 fingerprint of the ed25519 key pair at path and path+".pub",
// generating the pair first if path does not exist. The private key is
// written with mode 0600 in OpenSSH format, so ssh(1) can use it too.
func EnsureSSHKey(path string) (pub string, fingerprint string, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return generateSSHKey(path)
	}
	if err != nil {
		return "", "", fmt.Errorf("read ssh key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return "", "", fmt.Errorf("parse ssh key %s: %w", path, err)
	}
	pub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if _, err := os.Stat(path + ".pub"); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(path+".pub", []byte(pub+" banger\n"), 0o644); err != nil {
			return "", "", fmt.Errorf("write ssh public key: %w", err)
		}
	}
	return pub, ssh.FingerprintSHA256(signer.PublicKey()), nil
}

func generateSSHKey(path string) (string, string, error) {
	pubKey, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "banger")
	if err != nil {
		return "", "", fmt.Errorf("marshal ssh key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pubKey)
	if err != nil {
		return "", "", fmt.Errorf("marshal ssh public key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", "", fmt.Errorf("create ssh key dir: %w", err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	if err := writeFileAtomic(path+".pub", []byte(pub+" banger\n"), 0o644); err != nil {
		return "", "", fmt.Errorf("write ssh public key: %w", err)
	}
	// The private key goes last: its presence is what marks the pair done.
	if err := writeFileAtomic(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", "", fmt.Errorf("write ssh key: %w", err)
	}
	return pub, ssh.FingerprintSHA256(sshPub), nil
}

// Fingerprint returns the SHA256 fingerprint ("SHA256:...") of a public key
// in authorized_keys format.
func Fingerprint(pubKey string) (string, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pubKey))
	if err != nil {
		return "", model.Errorf(model.EINVALID, "parse ssh public key: %w", err)
	}
	return ssh.FingerprintSHA256(k), nil
}

// writeFileAtomic writes data so a reader sees the old file or the whole
// new one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return fsutil.WriteFileAtomic(path, data, mode)
}

// writeAtomic is writeFileAtomic with the content read from r.
func writeAtomic(path string, r io.Reader, mode os.FileMode) error {
	return fsutil.WriteAtomic(path, r, mode)
}
