package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFromBuildInfo(t *testing.T) {
	tests := map[string]struct {
		bi     *debug.BuildInfo
		linked string
		want   Info
	}{
		"no build info": {nil, "", Info{"devel", "unknown", runtime.Version()}},
		"work tree build": {&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}},
			"", Info{"devel", "abc123+dirty", "go1.26.8"}},
		"go install of a tag": {&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}},
			"", Info{"v1.2.3", "unknown", "go1.26.8"}},
		"release build, version linked in": {&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "false"}}},
			"v2.0.0", Info{"v2.0.0", "abc123", "go1.26.8"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, fromBuildInfo(tt.bi, tt.linked)); diff != "" {
				t.Errorf("fromBuildInfo (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGetIsStable(t *testing.T) {
	if a, b := Get(), Get(); a != b || a.Version == "" || a.GoVersion == "" {
		t.Errorf("Get() = %+v then %+v", a, b)
	}
}
