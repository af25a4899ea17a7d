// Command grmverifier loads grmwrap's steering program with verifier
// statistics and prints what the verifier processed: instructions, states,
// stack use. Run as root (make verifier-report).
package main

import (
	"fmt"
	"os"

	"github.com/grmwrap/grmwrap/bpf"
)

func main() {
	r, err := bpf.VerifierReport()
	if err != nil {
		fmt.Fprintf(os.Stderr, "grmverifier: %v\n", err)
		os.Exit(1)
	}
	fmt.Print(r)
}
