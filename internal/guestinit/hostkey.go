package guestinit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"os"
)

// ensureHostKey makes an ed25519 SSH host key at path unless one is
// there: banger's daemon writes each VM's key before its first boot, so
// this only serves a disk booted some other way. A key that exists is
// never replaced.
func ensureHostKey(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	priv, pub, err := newHostKey("root@banger")
	if err != nil {
		return err
	}
	if err := os.MkdirAll("/etc/ssh", 0o755); err != nil {
		return err
	}
	if err := replaceFile(path, priv, 0o600); err != nil {
		return err
	}
	return replaceFile(path+".pub", pub, 0o644)
}

// newHostKey returns a new ed25519 key as OpenSSH writes it (the
// "openssh-key-v1" format, unencrypted) and its public line.
func newHostKey(comment string) (priv, pub []byte, err error) {
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	wirePub := sshString(nil, []byte("ssh-ed25519"))
	wirePub = sshString(wirePub, pk)

	var check [4]byte
	if _, err := rand.Read(check[:]); err != nil {
		return nil, nil, err
	}
	var secret []byte
	secret = append(secret, check[:]...)
	secret = append(secret, check[:]...)
	secret = sshString(secret, []byte("ssh-ed25519"))
	secret = sshString(secret, pk)
	secret = sshString(secret, sk) // seed and public key, 64 bytes
	secret = sshString(secret, []byte(comment))
	for i := byte(1); len(secret)%8 != 0; i++ {
		secret = append(secret, i)
	}

	var b []byte
	b = append(b, "openssh-key-v1\x00"...)
	b = sshString(b, []byte("none"))
	b = sshString(b, []byte("none"))
	b = sshString(b, nil)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = sshString(b, wirePub)
	b = sshString(b, secret)
	priv = pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: b})
	pub = []byte("ssh-ed25519 " + base64.StdEncoding.EncodeToString(wirePub) + " " + comment + "\n")
	return priv, pub, nil
}

// sshString appends s as an SSH wire string (a length, then the bytes).
func sshString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}
