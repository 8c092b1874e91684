package cli

import (
	"banger/internal/fsutil"
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"
)

// configDir is the user's banger directory (~/.config/banger).
func (a *App) configDir() (string, error) {
	if x := a.getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "banger"), nil
	}
	home := a.getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find home directory: %w", err)
		}
		home = h
	}
	return filepath.Join(home, ".config", "banger"), nil
}

// bangerKey returns the path of the private key banger keeps for this
// user, generating it on first use. It has no passphrase so `banger ssh`
// never prompts; it is only ever authorized in banger VMs.
func (a *App) bangerKey() (string, error) {
	dir, err := a.configDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "ssh", "id_ed25519")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create banger key: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("create banger key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "banger")
	if err != nil {
		return "", fmt.Errorf("create banger key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("create banger key: %w", err)
	}
	// The public half first: the private key's name is what says the
	// pair exists.
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " banger\n"
	if err := fsutil.WriteFileAtomic(path+".pub", []byte(line), 0o644); err != nil {
		return "", fmt.Errorf("create banger key: %w", err)
	}
	if err := fsutil.WriteFileAtomic(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", fmt.Errorf("create banger key: %w", err)
	}
	return path, nil
}

// userPublicKeys returns the public keys to authorize in a new VM: banger's
// key for this user and every valid key in ~/.ssh/*.pub.
func (a *App) userPublicKeys() ([]string, error) {
	var keys []string
	seen := map[string]bool{}
	add := func(line string) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			return
		}
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return
		}
		fp := ssh.FingerprintSHA256(pk)
		if seen[fp] {
			return
		}
		seen[fp] = true
		keys = append(keys, line)
	}
	var errs []error
	key, err := a.bangerKey()
	if err != nil {
		errs = append(errs, err)
	} else if b, err := os.ReadFile(key + ".pub"); err == nil {
		add(string(b))
	}
	home := a.getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	pubs, _ := filepath.Glob(filepath.Join(home, ".ssh", "*.pub"))
	sort.Strings(pubs)
	for _, p := range pubs {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			add(sc.Text())
		}
		f.Close()
	}
	if len(keys) == 0 {
		return nil, errors.Join(append(errs, errors.New("no usable public key found"))...)
	}
	return keys, nil
}
