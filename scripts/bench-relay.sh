#!/usr/bin/env bash
# Relay benchmark (docs/benchmarks.md, "Relay"): viewers per core and memory per viewer for a 2 Mbps
# HTTP-FLV stream on loopback, side by side in one run:
#
#   (a) vantage-agent relay (release build), viewers straight on its media port;
#   (b) nginx as a plain reverse proxy in front of the agent (one upstream connection per viewer,
#       proxy_buffering off); its CPU/RSS are nginx (master + worker) PLUS the agent behind it;
#   (c) fanout.c, the physical-limit reference (same file, no parsing, no per-viewer state).
#
#   scripts/bench-relay.sh                      # N = 1000 3000 5000 viewers, 8 s each
#   VIEWERS="1000 3000" SECS=8 scripts/bench-relay.sh
#
# Instruments: ../shared/bench/{flvload.c,fanout.c} (compiled to a temp dir, never copied into the
# project). Needs gcc, ffmpeg, curl, python3; installs nginx with apt-get when missing (root).
# Every process this script starts is stopped on exit (trap). Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_DIR="${BENCH_DIR:-$ROOT/../shared/bench}"
VIEWERS="${VIEWERS:-1000 3000 5000}"
SECS="${SECS:-8}"
STREAM_PATH=/live/x.flv

log() { printf '==> %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ ! -f "$BENCH_DIR/flvload.c" || ! -f "$BENCH_DIR/fanout.c" ]]; then
    log "the measuring instruments are missing: expected $BENCH_DIR/flvload.c and fanout.c."
    log "They are not project code and are deliberately not vendored; check out the shared bench folder"
    log "next to the repository (../shared/bench) and run again."
    exit 2
fi
for tool in gcc ffmpeg curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

WORK="$(mktemp -d /tmp/vantage-bench-relay.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION SECONDS COMMAND... — polls COMMAND every 0.2 s.
wait_for() {
    local what="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

# --- build ---------------------------------------------------------------------------------------
log "building release binaries"
cargo build --release --bin vantage-agent --bin vantage-scheduler >&2
AGENT_BIN="$TARGET_DIR/release/vantage-agent"
SCHED_BIN="$TARGET_DIR/release/vantage-scheduler"

log "compiling instruments from $BENCH_DIR"
gcc -O2 -o "$WORK/flvload" "$BENCH_DIR/flvload.c"
gcc -O2 -o "$WORK/fanout" "$BENCH_DIR/fanout.c"

if ! command -v nginx >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 || die "nginx is missing (needs root + apt-get)"
    log "installing nginx"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq nginx >&2
fi
NGINX_BIN="$(command -v nginx)"

# --- source file: 2 Mbps H.264 FLV, encoded once and cached ----------------------------------------
SRC="$TARGET_DIR/bench-relay/src-2mbps.flv"
if [[ ! -s "$SRC" ]]; then
    log "encoding a 30 s 2 Mbps H.264 FLV (once, cached at $SRC)"
    mkdir -p "$(dirname "$SRC")"
    timeout 300 ffmpeg -nostdin -hide_banner -loglevel error -y \
        -f lavfi -i "testsrc2=size=1280x720:rate=30" \
        -c:v libx264 -preset veryfast -pix_fmt yuv420p -b:v 2000k -maxrate 2000k -bufsize 1000k \
        -x264-params nal-hrd=cbr -g 60 -t 30 -an -f flv "$SRC.tmp"
    mv "$SRC.tmp" "$SRC"
fi
SRC_KBPS=$(($(stat -c %s "$SRC") * 8 / 30 / 1000))
log "source: $SRC ($SRC_KBPS kbps)"

# --- scheduler + one agent ---------------------------------------------------------------------------
SCHED_QUIC=$(free_port)
SCHED_GRPC=$(free_port)
SCHED_HTTP=$(free_port)
MEDIA=$(free_port)
ADMIN=$(free_port)
PROBE=$(free_port)
"$SCHED_BIN" --dev --data-dir "$WORK/sched" --quic-listen "127.0.0.1:$SCHED_QUIC" \
    --grpc-listen "127.0.0.1:$SCHED_GRPC" --http-listen "127.0.0.1:$SCHED_HTTP" \
    >"$WORK/sched.log" 2>&1 &
PIDS+=($!)
wait_for "scheduler /readyz" 30 curl -fsS "http://127.0.0.1:$SCHED_HTTP/readyz"

RUST_LOG="${RUST_LOG:-warn}" "$AGENT_BIN" --node-id bench-1 --scheduler "127.0.0.1:$SCHED_QUIC" \
    --routes "https://127.0.0.1:$SCHED_GRPC" --ca "$WORK/sched/dev/ca.pem" \
    --token-file "$WORK/sched/dev/enroll.token" --data-dir "$WORK/agent" \
    --http-listen "127.0.0.1:$MEDIA" --admin-listen "127.0.0.1:$ADMIN" --probe-listen "127.0.0.1:$PROBE" \
    --rtmp-listen "127.0.0.1:$(free_port)" \
    --public-url "http://127.0.0.1:$MEDIA" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
wait_for "agent /readyz" 30 curl -fsS "http://127.0.0.1:$ADMIN/readyz"

timeout 3600 ffmpeg -nostdin -hide_banner -loglevel error -re -stream_loop -1 -i "$SRC" -c copy \
    -f flv "http://127.0.0.1:$MEDIA$STREAM_PATH" >"$WORK/publish.log" 2>&1 &
PIDS+=($!)

# A play request returns media bytes once the stream is up.
stream_up() {
    local port="$1" n
    n=$(curl -s --max-time 2 -o - "http://127.0.0.1:$port$STREAM_PATH" 2>/dev/null | wc -c)
    ((n > 100000))
}
wait_for "the published stream on the agent" 30 stream_up "$MEDIA"

# --- nginx, plain reverse proxy ---------------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 65536;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
user root;
daemon off;
events { worker_connections 32768; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    upstream agent { server 127.0.0.1:$MEDIA; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://agent;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 60s;
        }
    }
}
EOF
"$NGINX_BIN" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >"$WORK/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_for "nginx to proxy the stream" 30 stream_up "$NGINX_PORT"

# --- fanout.c reference --------------------------------------------------------------------------------
# Started afresh for every run: fanout.c joins a viewer at `elapsed % file length` while its send
# head keeps counting past the end of the file, so a viewer joining after the first loop of the file
# (30 s) is handed a whole file length of backlog at once. Each run ends well within 30 s.
FANOUT_PORT=""
FANOUT_PID=""
start_fanout() {
    FANOUT_PORT=$(free_port)
    "$WORK/fanout" "$FANOUT_PORT" "$SRC" "$SRC_KBPS" >"$WORK/fanout.log" 2>&1 &
    FANOUT_PID=$!
    PIDS+=("$FANOUT_PID")
    wait_for "fanout.c" 30 stream_up "$FANOUT_PORT"
}
stop_fanout() {
    kill "$FANOUT_PID" 2>/dev/null || true
    wait "$FANOUT_PID" 2>/dev/null || true
}

# --- measurement helpers -------------------------------------------------------------------------------
TICKS=$(getconf CLK_TCK)

# cpu_ticks PID... — utime+stime summed (fields 14, 15 after the "(comm)").
cpu_ticks() {
    local total=0 pid rest
    for pid in "$@"; do
        rest=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
# rss_kb PID... — VmRSS summed.
rss_kb() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || v=0
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
# pids_of NAME — the processes that make up a server under test.
pids_of() {
    case "$1" in
        vantage) echo "$AGENT_PID" ;;
        nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ') $AGENT_PID" ;;
        nginx-only) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
        fanout) echo "$FANOUT_PID" ;;
    esac
}
port_of() {
    case "$1" in
        vantage) echo "$MEDIA" ;;
        nginx) echo "$NGINX_PORT" ;;
        fanout) echo "$FANOUT_PORT" ;;
    esac
}
label_of() {
    case "$1" in
        vantage) echo "vantage-agent relay" ;;
        nginx) echo "nginx proxy + agent" ;;
        fanout) echo "fanout.c reference" ;;
    esac
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# RSS: (b) counts nginx only (its own per-connection cost; the agent's is (a)). KB per viewer is
# measured against the server's RSS before its first run (allocators keep freed memory).
for server in vantage nginx fanout; do
    rss_server=$server
    [[ $server == nginx ]] && rss_server=nginx-only
    # shellcheck disable=SC2046
    rss0=$(rss_kb $(pids_of "$rss_server"))
    for n in $VIEWERS; do
        if [[ $server == fanout ]]; then
            start_fanout
            rss0=$(rss_kb "$FANOUT_PID")
        fi
        # shellcheck disable=SC2046
        set -- $(pids_of "$server")
        # shellcheck disable=SC2046
        rss_pids=($(pids_of "$rss_server"))
        port=$(port_of "$server")
        sleep 2 # let sockets of the previous run close
        out="$WORK/flvload.$server.$n"
        timeout $((SECS + 120)) "$WORK/flvload" 127.0.0.1 "$port" "$STREAM_PATH" "$n" "$SECS" >"$out" &
        load_pid=$!
        PIDS+=("$load_pid")
        # CPU window = flvload's measuring phase: skip its connect phase and 2 s warm-up (3 s).
        sleep 3
        t_start=$(date +%s.%N)
        c0=$(cpu_ticks "$@")
        # Peak RSS while the viewers are connected (sampled every 0.5 s).
        rss1=$(rss_kb "${rss_pids[@]}")
        while kill -0 "$load_pid" 2>/dev/null; do
            r=$(rss_kb "${rss_pids[@]}")
            ((r > rss1)) && rss1=$r
            sleep 0.5
        done
        wait "$load_pid" || true
        c1=$(cpu_ticks "$@")
        t_end=$(date +%s.%N)
        line=$(cat "$out")
        [[ -n "$line" ]] || line="connected=0 active=0 total_mbps=0 min_kbps=0 median_kbps=0"
        log "$(label_of "$server") N=$n: $line"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$n" "$line" "$((c1 - c0))" \
            "$(python3 -c "print($t_end - $t_start)")" \
            "$rss0" "$rss1" >>"$RESULTS"
        if [[ $server == fanout ]]; then stop_fanout; fi
    done
done

python3 - "$RESULTS" "$TICKS" "$SRC_KBPS" <<'PY'
import sys
path, ticks, src_kbps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
labels = {"vantage": "vantage-agent relay", "nginx": "nginx proxy → agent (CPU: both; RSS: nginx)",
          "fanout": "fanout.c reference"}
print(f"\nsource {src_kbps} kbps; CPU = utime+stime over flvload's measuring phase / its wall time\n")
print("| server | viewers | connected / active | total Mbps | min / median kbps per viewer "
      "| CPU cores | full-rate viewers per core | RSS before → peak | KB per viewer |")
print("|---|---|---|---|---|---|---|---|---|")
for row in open(path):
    server, n, line, dticks, wall, rss0, rss1 = row.rstrip("\n").split("\t")
    kv = dict(p.split("=") for p in line.split())
    n, rss0, rss1 = int(n), int(rss0), int(rss1)
    cores = int(dticks) / ticks / float(wall)
    active = int(kv["active"])
    # Viewers per core counts full-rate equivalents: min(active, total delivered / source rate).
    full = min(active, float(kv["total_mbps"]) * 1000 / src_kbps)
    vpc = f"{full / cores:,.0f}" if cores > 0 else "—"
    kb = (rss1 - rss0) / n
    print(f"| {labels[server]} | {n:,} | {int(kv['connected']):,} / {active:,} | {kv['total_mbps']} "
          f"| {kv['min_kbps']} / {kv['median_kbps']} | {cores:.2f} | {vpc} "
          f"| {rss0 / 1024:.0f} → {rss1 / 1024:.0f} MB | {kb:.1f} |")
PY
