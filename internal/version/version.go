// Package version names this build of Weft.
package version

import "runtime/debug"

// Name is the server software name reported to clients and servers.
const Name = "Weft"

// Version is the release; builds from a checkout append the VCS revision.
const Version = "0.1.0-dev"

// String returns the version with the VCS revision when the build has one.
func String() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return Version + "+" + s.Value[:12]
			}
		}
	}
	return Version
}
