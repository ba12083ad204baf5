#!/usr/bin/env bash
# Throwaway PostgreSQL on loopback for the Vantage test suite.
#
#   source scripts/postgres.sh            # starts (or reuses) it and exports VANTAGE_TEST_POSTGRES_URL
#   eval "$(scripts/postgres.sh)"         # same, when run as a program (prints an `export ...` line)
#   scripts/postgres.sh stop [DIR]        # stop the server (data kept: the next start is fast)
#   scripts/postgres.sh destroy [DIR]     # stop it and delete DIR
#   scripts/postgres.sh status [DIR]      # exit 0 and print the URL when it is running
#
# If VANTAGE_TEST_POSTGRES_URL is already set, `up` does nothing. Otherwise the PostgreSQL server
# binaries are looked up in /usr/lib/postgresql/*/bin (installed with apt-get when missing, as
# root), a cluster is created once in DIR (default: $VANTAGE_PG_DIR or /tmp/vantage-test-pg-$UID)
# with trust authentication, and started listening on 127.0.0.1 only, on a free port from 54329,
# with its unix socket inside DIR. Running it again reuses the running server or restarts the
# existing cluster without initdb. Settings favour speed over durability (fsync=off): tests only.
#
# A test script typically does:
#   source scripts/postgres.sh
#   trap 'scripts/postgres.sh stop' EXIT

# ---- sourced: do the work in a child bash (strict mode must not leak into the caller) ----------
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    if [[ -z "${VANTAGE_TEST_POSTGRES_URL:-}" ]]; then
        if _vantage_pg_out="$(bash "${BASH_SOURCE[0]}" url-only)"; then
            export VANTAGE_TEST_POSTGRES_URL="$_vantage_pg_out"
            echo "VANTAGE_TEST_POSTGRES_URL=$VANTAGE_TEST_POSTGRES_URL" >&2
        else
            echo "postgres.sh: could not start PostgreSQL" >&2
        fi
        unset _vantage_pg_out
    else
        echo "VANTAGE_TEST_POSTGRES_URL already set; nothing to do" >&2
    fi
    return 0 2>/dev/null || true
fi

set -euo pipefail

FIRST_PORT=54329
LAST_PORT=54399
DEFAULT_DIR="${VANTAGE_PG_DIR:-${TMPDIR:-/tmp}/vantage-test-pg-$(id -u)}"

log() { echo "postgres.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Prints the bin directory of the newest installed PostgreSQL server, or nothing.
find_bindir() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] || continue
        if [[ -z "$best" ]] || [[ "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n1)" == "$d" ]]; then
            best="$d"
        fi
    done
    printf '%s' "$best"
}

ensure_binaries() {
    BINDIR="$(find_bindir)"
    if [[ -n "$BINDIR" ]]; then
        return
    fi
    [[ "$(id -u)" == 0 ]] || die "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin and not root: install the postgresql package"
    log "installing PostgreSQL with apt-get (one time)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    BINDIR="$(find_bindir)"
    [[ -n "$BINDIR" ]] || die "apt-get installed postgresql but no server binaries in /usr/lib/postgresql/*/bin"
}

# Runs a PostgreSQL binary as the cluster owner (initdb and postgres refuse to run as root).
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

url_for() { printf 'postgres://postgres@127.0.0.1:%s/postgres' "$1"; }

# Exit status 0 when the cluster in $1 runs and accepts connections on its recorded port.
is_up() {
    local dir="$1" port
    [[ -f "$dir/port" && -f "$dir/data/postmaster.pid" ]] || return 1
    port="$(cat "$dir/port")"
    [[ -n "${BINDIR:-}" ]] || BINDIR="$(find_bindir)"
    [[ -n "$BINDIR" ]] || return 1
    as_owner "$BINDIR/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 || return 1
    "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 2 >/dev/null 2>&1
}

cmd_up() {
    local dir="$1"
    if [[ -n "${VANTAGE_TEST_POSTGRES_URL:-}" ]]; then
        log "VANTAGE_TEST_POSTGRES_URL already set; nothing to do"
        printf '%s\n' "$VANTAGE_TEST_POSTGRES_URL"
        return
    fi
    ensure_binaries
    if is_up "$dir"; then
        log "reusing the running server in $dir"
        url_for "$(cat "$dir/port")"
        echo
        return
    fi

    mkdir -p "$dir"
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (is the postgresql package installed?)"
        chown postgres:postgres "$dir"
        chmod 0700 "$dir"
    fi

    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        log "initdb $dir/data"
        rm -rf "$dir/data"
        as_owner "$BINDIR/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
            --no-sync >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            die "initdb failed"
        }
        # Throwaway test cluster: speed over durability; room for parallel tests.
        as_owner tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# --- vantage test settings (scripts/postgres.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    else
        # A stale postmaster.pid (killed server) would block the start; pg_ctl status says so.
        as_owner "$BINDIR/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 || rm -f "$dir/data/postmaster.pid"
    fi

    local port started=""
    for ((port = FIRST_PORT; port <= LAST_PORT; port++)); do
        port_in_use "$port" && continue
        log "starting PostgreSQL ($BINDIR) on 127.0.0.1:$port"
        if as_owner "$BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port" start >/dev/null 2>&1; then
            started="$port"
            break
        fi
        log "start on port $port failed; last log lines:"
        tail -n 5 "$dir/server.log" >&2 || true
    done
    [[ -n "$started" ]] || die "could not start PostgreSQL on any port in $FIRST_PORT..$LAST_PORT"
    echo "$started" | as_owner tee "$dir/port" >/dev/null

    local i
    for ((i = 0; i < 100; i++)); do
        if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$started" -U postgres -d postgres -t 1; then
            url_for "$started"
            echo
            return
        fi
        sleep 0.1
    done
    die "PostgreSQL started but is not accepting connections on 127.0.0.1:$started (see $dir/server.log)"
}

cmd_stop() {
    local dir="$1"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        log "no cluster in $dir"
        return
    fi
    BINDIR="$(find_bindir)"
    [[ -n "$BINDIR" ]] || die "PostgreSQL binaries not found"
    if as_owner "$BINDIR/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_owner "$BINDIR/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
        log "stopped the server in $dir"
    else
        log "server in $dir is not running"
    fi
}

case "${1:-up}" in
    up)
        url="$(cmd_up "${2:-$DEFAULT_DIR}")"
        printf 'export VANTAGE_TEST_POSTGRES_URL=%s\n' "$url"
        ;;
    url-only)
        cmd_up "${2:-$DEFAULT_DIR}"
        ;;
    stop)
        cmd_stop "${2:-$DEFAULT_DIR}"
        ;;
    destroy)
        dir="${2:-$DEFAULT_DIR}"
        cmd_stop "$dir"
        rm -rf "$dir"
        log "removed $dir"
        ;;
    status)
        dir="${2:-$DEFAULT_DIR}"
        if is_up "$dir"; then
            url_for "$(cat "$dir/port")"
            echo
        else
            log "not running ($dir)"
            exit 1
        fi
        ;;
    -h | --help | help)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$1' (use: up | stop [DIR] | destroy [DIR] | status [DIR])"
        ;;
esac
