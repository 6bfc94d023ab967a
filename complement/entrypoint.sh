#!/bin/sh
# Starts Weft as Complement (github.com/matrix-org/complement) runs a
# homeserver under test: SERVER_NAME names it (hs1, hs2, ...), the client
# API listens on 8008 (plain HTTP), federation on 8448 (TLS, with a
# certificate issued at every start from the CA Complement copies to
# /complement/ca), and the state lives on the container's own disk, so
# that stopping, committing and starting the container again keeps it.
#
# Needs a POSIX shell and the weft binary on PATH, nothing else.
#
# Every Weft option can still be changed through its WEFT_* variable (for
# example with Complement's COMPLEMENT_SHARE_ENV_PREFIX pass-through):
# what is set here is only a default, except the server name.
#
# CONTAINER_ROOT (default: empty, the container's /) is the directory
# standing in for / when this runs outside a container, as in the test
# next to this file.
set -eu

: "${SERVER_NAME:?SERVER_NAME must name the server (Complement sets hs1, hs2, ...)}"

root="${CONTAINER_ROOT:-}"
ca="$root/complement/ca"
data="${WEFT_DATA_DIR:-$root/var/lib/weft}"

export WEFT_SERVER_NAME="$SERVER_NAME"
export WEFT_DATA_DIR="$data"
export WEFT_DATABASE_URL="${WEFT_DATABASE_URL:-sqlite:$data/weft.db}"
export WEFT_CLIENT_LISTEN="${WEFT_CLIENT_LISTEN:-:8008}"
export WEFT_FEDERATION_LISTEN="${WEFT_FEDERATION_LISTEN:-:8448}"

if [ -f "$ca/ca.crt" ] && [ -f "$ca/ca.key" ]; then
	export WEFT_FEDERATION_TLS_CA_CERT="${WEFT_FEDERATION_TLS_CA_CERT:-$ca/ca.crt}"
	export WEFT_FEDERATION_TLS_CA_KEY="${WEFT_FEDERATION_TLS_CA_KEY:-$ca/ca.key}"
	export WEFT_FEDERATION_TRUSTED_CA_FILE="${WEFT_FEDERATION_TRUSTED_CA_FILE:-$ca/ca.crt}"
else
	# Not under Complement (a manual docker run): Weft's self-signed
	# certificate, which other servers only accept without verification.
	echo "complement/entrypoint.sh: no $ca/ca.crt and ca.key; using a self-signed federation certificate" >&2
fi

# Complement's own federation test servers are host.docker.internal:<port>
# and the other homeservers hsN:8448, all on private addresses.
export WEFT_FEDERATION_ALLOW_PRIVATE_NETWORKS="${WEFT_FEDERATION_ALLOW_PRIVATE_NETWORKS:-0.0.0.0/0,::/0}"
export WEFT_FEDERATION_KEY_NOTARIES="${WEFT_FEDERATION_KEY_NOTARIES:-}"

export WEFT_REGISTRATION_ENABLED="${WEFT_REGISTRATION_ENABLED:-true}"
export WEFT_REGISTRATION_SHARED_SECRET="${WEFT_REGISTRATION_SHARED_SECRET:-complement}"
export WEFT_RATE_LIMITS_ENABLED="${WEFT_RATE_LIMITS_ENABLED:-false}"
export WEFT_AUTH_BCRYPT_COST="${WEFT_AUTH_BCRYPT_COST:-4}"

# Complement copies application service registrations here. Weft has no
# application services yet: say so rather than ignore them silently.
for f in "$root"/complement/appservice/*.yaml; do
	if [ -e "$f" ]; then
		echo "complement/entrypoint.sh: $f not loaded: Weft does not support application services yet" >&2
	fi
done

mkdir -p "$data"
# exec: Complement's SIGTERM (docker stop) must reach weft itself.
exec weft serve
