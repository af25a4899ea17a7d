package generations

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"testing"
)

var _ SocketSink = (*Registry)(nil)

func testSocket(gen uint32, ino uint64) Socket {
	return Socket{
		Group: GroupKey{
			NetNS:  4026531840,
			Family: FamilyINET,
			Addr:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 53),
		},
		Generation: gen,
		PID:        1000 + int(gen),
		Inode:      ino,
		Cookie:     ino * 7,
	}
}

func inodes(ss []Socket) []uint64 {
	out := make([]uint64, len(ss))
	for i, s := range ss {
		out[i] = s.Inode
	}
	return out
}

func equalInodes(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// pipeFile returns the write end of a fresh pipe and its read end; the read
// end sees EOF once every copy of the write end is closed.
func pipeFile(t *testing.T) (w, r *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatalf("pipe: %v", err)
	}
	t.Cleanup(func() {
		r.Close()
		w.Close()
	})
	return w, r
}

func TestRegistryAddSocketClosesFile(t *testing.T) {
	r := NewRegistry()
	w, rd := pipeFile(t)
	s := testSocket(1, 11)
	s.File = w
	if err := r.AddSocket(context.Background(), s); err != nil {
		t.Fatalf("AddSocket: %v", err)
	}
	if err := w.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("closing the file after AddSocket: %v, want os.ErrClosed", err)
	}
	// The descriptor itself is gone: the pipe has no writer left.
	if n, err := rd.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("read from the pipe: %d, %v; want EOF", n, err)
	}
	got := r.Sockets(1)
	if len(got) != 1 {
		t.Fatalf("Sockets(1) = %v, want one socket", got)
	}
	if got[0].File != nil {
		t.Errorf("the registry holds a file: %v", got[0].File)
	}
	want := testSocket(1, 11)
	if got[0] != want {
		t.Errorf("recorded %+v, want %+v", got[0], want)
	}
}

func TestRegistryAddSocketClosesFileOfDuplicate(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	for i := range 2 {
		w, _ := pipeFile(t)
		s := testSocket(1, 11)
		s.File = w
		if err := r.AddSocket(ctx, s); err != nil {
			t.Fatalf("AddSocket #%d: %v", i, err)
		}
		if err := w.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("AddSocket #%d left the file open (Close: %v)", i, err)
		}
	}
}

func TestRegistryAddSocketCancelledContextStillClosesFile(t *testing.T) {
	r := NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w, _ := pipeFile(t)
	s := testSocket(1, 11)
	s.File = w
	_ = r.AddSocket(ctx, s) // recording or not is the registry's choice
	if err := w.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("AddSocket with a cancelled context left the file open (Close: %v)", err)
	}
}

func TestRegistryAddSocketWithoutFile(t *testing.T) {
	r := NewRegistry()
	if err := r.AddSocket(context.Background(), testSocket(2, 5)); err != nil {
		t.Fatalf("AddSocket: %v", err)
	}
	if got := inodes(r.Sockets(2)); !equalInodes(got, []uint64{5}) {
		t.Errorf("Sockets(2) = %v", got)
	}
}

func TestRegistryDuplicateInode(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	first := testSocket(1, 42)
	second := testSocket(1, 42)
	second.PID = 9999 // a re-delivered bind, seen from another thread
	for _, s := range []Socket{first, testSocket(1, 43), second, first} {
		if err := r.AddSocket(ctx, s); err != nil {
			t.Fatalf("AddSocket: %v", err)
		}
	}
	got := r.Sockets(1)
	if !equalInodes(inodes(got), []uint64{42, 43}) {
		t.Fatalf("Sockets(1) = %v, want inodes 42, 43 once each", inodes(got))
	}
	if got[0] != first {
		t.Errorf("the duplicate replaced the first record: %+v", got[0])
	}
}

func TestRegistrySocketsBindOrderAndCopy(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	order := []uint64{30, 10, 20, 5, 1000}
	for _, ino := range order {
		if err := r.AddSocket(ctx, testSocket(3, ino)); err != nil {
			t.Fatal(err)
		}
	}
	got := r.Sockets(3)
	if !equalInodes(inodes(got), order) {
		t.Fatalf("Sockets(3) = %v, want bind order %v", inodes(got), order)
	}
	// Changing the returned slice does not change the registry...
	got[0].Inode = 999
	got[1] = Socket{}
	_ = append(got[:2], testSocket(3, 77))
	if again := inodes(r.Sockets(3)); !equalInodes(again, order) {
		t.Fatalf("after changing a returned slice, Sockets(3) = %v", again)
	}
	// ...and a later AddSocket does not change a slice returned before.
	before := r.Sockets(3)
	if err := r.AddSocket(ctx, testSocket(3, 31)); err != nil {
		t.Fatal(err)
	}
	if !equalInodes(inodes(before), order) {
		t.Fatalf("a returned slice changed after AddSocket: %v", inodes(before))
	}
	if got := inodes(r.Sockets(3)); !equalInodes(got, append(append([]uint64{}, order...), 31)) {
		t.Fatalf("Sockets(3) = %v after adding 31", got)
	}
}

func TestRegistryUnknownGeneration(t *testing.T) {
	r := NewRegistry()
	if got := r.Sockets(7); len(got) != 0 {
		t.Errorf("Sockets of an unknown generation = %v", got)
	}
	if got := r.Release(7); len(got) != 0 {
		t.Errorf("Release of an unknown generation = %v", got)
	}
}

func TestRegistryGenerationsAreSeparate(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	for _, s := range []Socket{testSocket(1, 1), testSocket(2, 2), testSocket(1, 3), testSocket(2, 4)} {
		if err := r.AddSocket(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if got := inodes(r.Sockets(1)); !equalInodes(got, []uint64{1, 3}) {
		t.Errorf("Sockets(1) = %v", got)
	}
	if got := inodes(r.Sockets(2)); !equalInodes(got, []uint64{2, 4}) {
		t.Errorf("Sockets(2) = %v", got)
	}
	for _, s := range r.Sockets(2) {
		if s.Generation != 2 {
			t.Errorf("socket %d of generation 2 says generation %d", s.Inode, s.Generation)
		}
	}
}

func TestRegistryRelease(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	for _, s := range []Socket{testSocket(1, 1), testSocket(2, 2), testSocket(1, 3)} {
		if err := r.AddSocket(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	released := r.Release(1)
	if !equalInodes(inodes(released), []uint64{1, 3}) {
		t.Fatalf("Release(1) = %v, want 1, 3 in bind order", inodes(released))
	}
	if got := r.Sockets(1); len(got) != 0 {
		t.Errorf("Sockets(1) after Release = %v", got)
	}
	if got := r.Release(1); len(got) != 0 {
		t.Errorf("second Release(1) = %v", got)
	}
	if got := inodes(r.Sockets(2)); !equalInodes(got, []uint64{2}) {
		t.Errorf("Release(1) touched generation 2: %v", got)
	}
	// A released socket is forgotten: the same inode may be recorded again.
	if err := r.AddSocket(ctx, testSocket(1, 3)); err != nil {
		t.Fatal(err)
	}
	if got := inodes(r.Sockets(1)); !equalInodes(got, []uint64{3}) {
		t.Errorf("Sockets(1) after re-adding = %v", got)
	}
	// The slice Release returned is the caller's.
	if !equalInodes(inodes(released), []uint64{1, 3}) {
		t.Errorf("released slice changed to %v", inodes(released))
	}
}

func TestRegistryConcurrent(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	const (
		gens       = 4
		workers    = 8
		perWorker  = 50
		duplicates = 3 // each socket is reported this many times
	)
	var wg sync.WaitGroup
	errs := make(chan error, gens*workers*perWorker*duplicates)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				for g := uint32(1); g <= gens; g++ {
					// A socket lives in one generation: inodes differ.
					ino := uint64(g)<<32 | uint64(w*perWorker+i+1)
					for range duplicates {
						if err := r.AddSocket(ctx, testSocket(g, ino)); err != nil {
							errs <- err
						}
					}
				}
				_ = r.Sockets(uint32(i%gens) + 1)
			}
		}()
	}
	// Readers and a releaser of another generation run alongside.
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 200 {
			for g := uint32(1); g <= gens; g++ {
				for _, s := range r.Sockets(g) {
					if s.Generation != g {
						errs <- fmt.Errorf("generation %d holds a socket of generation %d", g, s.Generation)
					}
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 200 {
			_ = r.AddSocket(ctx, testSocket(gens+1, uint64(gens+1)<<32|uint64(i)))
			_ = r.Release(gens + 1)
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for g := uint32(1); g <= gens; g++ {
		got := r.Sockets(g)
		if len(got) != workers*perWorker {
			t.Errorf("generation %d: %d sockets, want %d", g, len(got), workers*perWorker)
		}
		seen := make(map[uint64]bool, len(got))
		for _, s := range got {
			if seen[s.Inode] {
				t.Errorf("generation %d: inode %d recorded twice", g, s.Inode)
			}
			seen[s.Inode] = true
		}
	}
}

func TestRegistryConcurrentFilesClosed(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	const n = 32
	files := make([]*os.File, n)
	for i := range files {
		files[i], _ = pipeFile(t)
	}
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := testSocket(1, uint64(i%8)) // many duplicates
			s.File = f
			_ = r.AddSocket(ctx, s)
		}()
	}
	wg.Wait()
	for i, f := range files {
		if err := f.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("file %d left open (Close: %v)", i, err)
		}
	}
	if got := len(r.Sockets(1)); got != 8 {
		t.Errorf("%d sockets recorded, want 8", got)
	}
}

// TestRegistrySocketInOneGeneration: a socket (inode) already recorded under
// one generation is not recorded under another.
func TestRegistrySocketInOneGeneration(t *testing.T) {
	r := NewRegistry()
	ctx := context.Background()
	if err := r.AddSocket(ctx, testSocket(1, 42)); err != nil {
		t.Fatal(err)
	}
	if err := r.AddSocket(ctx, testSocket(2, 42)); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Sockets(2)); n != 0 {
		t.Fatalf("generation 2 holds %d sockets, want 0: inode 42 belongs to generation 1", n)
	}
	if n := len(r.Sockets(1)); n != 1 {
		t.Fatalf("generation 1 holds %d sockets, want 1", n)
	}
}
