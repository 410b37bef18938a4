//go:build race

package tests

// The test binary runs under the race detector: TestMain builds the
// chainfs binary under test with -race too, so that the daemon's own
// goroutines are checked while the tests drive it.
func init() { raceBuild = true }
