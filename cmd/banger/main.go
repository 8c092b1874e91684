// Command banger is the CLI of banger: throwaway developer sandboxes on
// Firecracker microVMs. It talks to bangerd over a unix socket.
package main

import (
	"os"

	"banger/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
