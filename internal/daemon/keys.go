package daemon

import (
	"fmt"
	"os"

	"golang.org/x/crypto/ssh"
)

// daemonKeyFingerprint returns the SHA256 fingerprint of the daemon's
// configured SSH public key.
func (d *Daemon) daemonKeyFingerprint() (string, error) {
	data, err := os.ReadFile(d.cfg.SSHKeyPath + ".pub")
	if err != nil {
		return "", fmt.Errorf("read daemon public key: %w", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return "", fmt.Errorf("parse daemon public key: %w", err)
	}
	return ssh.FingerprintSHA256(pub), nil
}
