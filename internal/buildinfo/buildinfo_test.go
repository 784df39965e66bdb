package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestVersion(t *testing.T) {
	tests := map[string]struct {
		info debug.BuildInfo
		want string
	}{
		"released": {debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		"pseudo":   {debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261203120000-7866b91aaaaa"}}, "v0.0.0-20261203120000-7866b91aaaaa"},
		"devel with commit": {debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "7866b91aaaaabbbbccccdddd"}, {Key: "vcs.modified", Value: "true"}}}, "devel-7866b91aaaaa-dirty"},
		"devel clean": {debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}}}, "devel-abc"},
		"nothing": {debug.BuildInfo{}, "devel"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := version(&tt.info); got != tt.want {
				t.Errorf("version() = %q, want %q", got, tt.want)
			}
		})
	}
	if Version() == "" {
		t.Error("Version() is empty")
	}
}
