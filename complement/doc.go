// Package complement packages Weft for Complement, the Matrix homeserver
// integration test suite (github.com/matrix-org/complement): a Dockerfile,
// the container's entrypoint.sh and, in this package's tests, a run of
// that entrypoint the way Complement runs it, without Docker. See
// README.md. There is no Go code here besides the tests.
package complement
