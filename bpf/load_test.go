package bpf

import (
	"testing"

	"github.com/grmwrap/grmwrap/internal/nstest"
)

// TestLoadVerifies loads the program: the verifier accepts it.
func TestLoadVerifies(t *testing.T) {
	nstest.RequirePrivileged(t)
	d, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p, err := d.Program(1)
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("program %s loaded", info.Name)
}
