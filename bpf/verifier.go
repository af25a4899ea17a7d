package bpf

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/cilium/ebpf"
)

// verifierStats matches the verifier's closing lines, e.g.
// "processed 123 insns (limit 1000000) max_states_per_insn 1 total_states 10
// peak_states 10 mark_read 5" and "stack depth 64".
var verifierStats = regexp.MustCompile(`(?m)^(processed \d+ insns.*|stack depth .*|verification time .*)$`)

// VerifierReport loads the program with the verifier's statistics and
// returns them with the program's size.
func VerifierReport() (string, error) {
	spec, err := loadReuseport()
	if err != nil {
		return "", fmt.Errorf("load program spec: %w", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	if err := spec.Variables["group_id"].Set(uint32(1)); err != nil {
		return "", fmt.Errorf("set group id: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return "", fmt.Errorf("load steering program: %+v", ve)
		}
		return "", fmt.Errorf("load steering program: %w", err)
	}
	defer coll.Close()
	prog := coll.Programs["grm_reuseport"]
	var b strings.Builder
	fmt.Fprintf(&b, "program grm_reuseport (sk_reuseport): %d instructions\n", len(spec.Programs["grm_reuseport"].Instructions))
	for _, l := range verifierStats.FindAllString(prog.VerifierLog, -1) {
		fmt.Fprintln(&b, l)
	}
	return b.String(), nil
}
