#!/usr/bin/env bash
# Shared set-up for test/check.sh and test/demo.sh: install the Debian
# packages that are missing, build pipeline_ext and its test broker, install
# the extension.  Sourced, not run.
set -euo pipefail

PE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BINDIR=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BINDIR/pg_config
export PATH="$PG_BINDIR:$PATH"

# as root or through sudo
pe_sudo() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

PE_PACKAGES=(
	make gcc libc6-dev pkg-config rsync
	postgresql-15 postgresql-server-dev-15 postgresql-contrib
	postgresql-15-hll postgresql-15-tdigest
	librdkafka-dev libavro-dev libcurl4-openssl-dev
	kcat python3 python3-confluent-kafka python3-psycopg2 prometheus-postgres-exporter
	python3-avro python3-requests
	libipc-run-perl libjson-pp-perl
)

pe_install_packages() {
	local missing=()
	for p in "${PE_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "== installing Debian packages: ${missing[*]}"
		pe_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
		pe_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
}

pe_build_install() {
	echo "== building pipeline_ext"
	make -C "$PE_ROOT" -s PG_CONFIG="$PG_CONFIG" ${CI:+WERROR=1}
	echo "== installing pipeline_ext"
	pe_sudo make -C "$PE_ROOT" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}

# PostgreSQL refuses to run as root: tests and the demo's instance run as an
# ordinary user (the postgres system user when we are root) in a copy of the
# tree it owns.
pe_run_user() {
	if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

pe_as_user() {
	local u
	u=$(pe_run_user)
	if [ "$(id -u)" -eq 0 ]; then runuser -u "$u" -- "$@"; else "$@"; fi
}

pe_workdir() {
	local dir=$1
	rm -rf "$dir"
	mkdir -p "$dir"
	rsync -a --exclude .git "$PE_ROOT"/ "$dir"/
	if [ "$(id -u)" -eq 0 ]; then chown -R "$(pe_run_user)" "$dir"; fi
}

pe_setup() {
	pe_install_packages
	pe_build_install
}

# pe_scratch DIR PORT BROKER_ARGS...: in DIR (made by pe_workdir), start the
# test broker with BROKER_ARGS and a scratch instance preloading
# pipeline_ext on PORT (more postgresql.conf lines from $PE_EXTRA_CONF);
# both stop when the calling script exits.  Sets BOOTSTRAP and CONTROL.
pe_scratch() {
	local dir=$1 port=$2
	shift 2
	PE_SCRATCH_DATA=$dir/data
	PE_SCRATCH_DIR=$dir
	trap pe_scratch_stop EXIT
	pe_as_user "$dir/test/broker/pe_broker" "$@" --info-file "$dir/broker.info" >"$dir/broker.log" 2>&1 &
	PE_BROKER_PID=$!
	for _ in $(seq 50); do [ -s "$dir/broker.info" ] && break; sleep 0.1; done
	BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$dir/broker.info")
	CONTROL=$(sed -n 's/^control=//p' "$dir/broker.info")
	[ -n "$BOOTSTRAP" ] || { echo "the test broker did not start; see $dir/broker.log" >&2; return 1; }
	pe_as_user initdb -D "$PE_SCRATCH_DATA" -A trust -U postgres >/dev/null
	cat >>"$PE_SCRATCH_DATA/postgresql.conf" <<CONF
shared_preload_libraries = 'pipeline_ext'
port = $port
unix_socket_directories = '$dir'
listen_addresses = ''
${PE_EXTRA_CONF:-}
CONF
	pe_as_user pg_ctl -D "$PE_SCRATCH_DATA" -l "$dir/postgres.log" -w start >/dev/null
}

pe_scratch_stop() {
	set +e
	pe_as_user pg_ctl -D "$PE_SCRATCH_DATA" -m fast stop >/dev/null 2>&1
	[ -n "${PE_BROKER_PID:-}" ] && kill "$PE_BROKER_PID" 2>/dev/null
	# (that is the subshell that ran runuser: the broker, its grandchild,
	# is found by its path, which is this scratch directory's own)
	[ -n "${PE_SCRATCH_DIR:-}" ] && pkill -f -- "$PE_SCRATCH_DIR/test/broker/pe_broker" 2>/dev/null
	wait 2>/dev/null
}
