package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	seccomp "github.com/seccomp/libseccomp-golang"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func printVersion(w io.Writer) error {
	maj, min, mic := seccomp.GetLibraryVersion()
	api, err := seccomp.GetAPI()
	if err != nil {
		api = 0
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	fmt.Fprintf(w, "grmwrap %s\n", version)
	fmt.Fprintf(w, "go %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "libseccomp %d.%d.%d (api level %d)\n", maj, min, mic, api)
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/seccomp/libseccomp-golang", "github.com/urfave/cli/v2", "golang.org/x/sys":
				fmt.Fprintf(w, "%s %s\n", d.Path, d.Version)
			}
		}
	}
	fmt.Fprintf(w, "kernel %s\n", kernel)
	return nil
}
