//go:build !unix

package loadgen

import "time"

// selfCPU is unknown here: the client's CPU is reported as 0.
func selfCPU() time.Duration { return 0 }
