package daemon

import (
	"fmt"
	"os"
	"strings"

	"banger/internal/model"

	"golang.org/x/crypto/ssh"
)

// validateAuthorizedKey checks one public key line sent by a client.
func validateAuthorizedKey(line string) error {
	if strings.ContainsAny(line, "\n\r") {
		return model.Errorf(model.EINVALID, "ssh public key: must be a single line")
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err != nil {
		return model.Errorf(model.EINVALID, "ssh public key %.40q: %v", line, err)
	}
	return nil
}

// saveUserKeys keeps the caller's public keys in the VM dir until the VM
// first boots, when they are added to the guest's authorized keys.
func (d *Daemon) saveUserKeys(vm model.VMRecord, keys []string) error {
	if err := os.MkdirAll(vm.Runtime.VMDir, 0o700); err != nil {
		return fmt.Errorf("save user keys: %w", err)
	}
	body := strings.Join(keys, "\n") + "\n"
	if err := os.WriteFile(userKeysPath(vm.Runtime.VMDir), []byte(body), 0o600); err != nil {
		return fmt.Errorf("save user keys: %w", err)
	}
	return nil
}
