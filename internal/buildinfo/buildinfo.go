// Package buildinfo is the one answer to "which mandate is this": the version the Go toolchain
// stamped into the binary, read once.
package buildinfo

import (
	"runtime/debug"
	"sync"
)

// Version is the module version of the main package (v1.2.3 for go install …@v1.2.3, a pseudo
// version for a build in a git checkout), else "devel" with the commit when the build recorded
// one.
func Version() string { return read() }

var read = sync.OnceValue(func() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return version(info)
})

func version(info *debug.BuildInfo) string {
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return "devel-" + rev + dirty
}
