// Package buildinfo says which build of mandate is running: the one place the version comes
// from, for mandate --version and the mandate_build_info metric alike.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// version may be set at link time (-ldflags "-X github.com/mandate-dev/mandate/internal/buildinfo.version=v1.2.3")
// by a release build; otherwise the module version recorded by the Go toolchain is used.
var version string

// Info is what the binary knows about its build.
type Info struct {
	Version   string // v1.2.3, or "devel" for a build from a work tree
	Revision  string // the VCS commit, "+dirty" when the tree had changes; "unknown" when not recorded
	GoVersion string // the Go release that built it, e.g. go1.26.8
}

// Get returns the running binary's build information.
var Get = sync.OnceValue(func() Info {
	bi, _ := debug.ReadBuildInfo() // nil when the binary carries none
	return fromBuildInfo(bi, version)
})

// Version is the version mandate --version prints.
func Version() string { return Get().Version }

func fromBuildInfo(bi *debug.BuildInfo, linked string) Info {
	in := Info{Version: linked, Revision: "unknown", GoVersion: runtime.Version()}
	if bi == nil {
		if in.Version == "" {
			in.Version = "devel"
		}
		return in
	}
	if bi.GoVersion != "" {
		in.GoVersion = bi.GoVersion
	}
	if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		in.Version = bi.Main.Version
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && in.Revision != "unknown" {
		in.Revision += "+dirty"
	}
	return in
}
