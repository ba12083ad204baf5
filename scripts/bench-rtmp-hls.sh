#!/usr/bin/env bash
# RTMP and LL-HLS benchmarks (docs/benchmarks.md, "RTMP ingest, LL-HLS and fan-out over whole
# runs"), each side by side with a reference in one run, on loopback:
#
#   1. RTMP ingest: P ffmpeg publishers (`-re -c copy`, 2 Mbps H.264 + AAC) into the agent and into
#      nginx-rtmp (Debian's libnginx-mod-rtmp, one worker); server CPU per publisher-Mbps.
#   2. LL-HLS: wrk with C connections fetching the newest complete segment and part of a live 2 Mbps
#      stream from the agent, and the same files copied to tmpfs and served by nginx (one worker);
#      requests/s, Gbit/s and CPU → per core.
#   3. HTTP-FLV fan-out over the *whole* run, connect burst included: flvload with N viewers joining
#      at once against the agent and fanout.c (../shared/bench), CPU from before the first connect to
#      after the last byte.
#   4. RTMP play fan-out, the same way: N RTMP players (tests/benches/viewers.rs) against the agent's
#      RTMP port, fanout.c's HTTP-FLV run as the reference.
#   5. LL-HLS fan-out, the same way: N LL-HLS players (blocking playlist reload + each part, one
#      keep-alive connection each; tests/benches/viewers.rs), fanout.c's run as the reference.
#
#   scripts/bench-rtmp-hls.sh
#   PUBLISHERS=8 CONNS=200 FANOUT="2000 4000" SECS=10 PHASES="1 2 3 4 5" scripts/bench-rtmp-hls.sh
#   AGENT_ARGS="--relay-write-coalesce-ms 100" PHASES=3 scripts/bench-rtmp-hls.sh   # extra agent flags
#
# Needs gcc, ffmpeg, curl, python3; installs nginx, libnginx-mod-rtmp and wrk with apt-get when
# missing (root). Every process it starts is stopped on exit. Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_DIR="${BENCH_DIR:-$ROOT/../shared/bench}"
PUBLISHERS="${PUBLISHERS:-8}"
CONNS="${CONNS:-200}"
FANOUT="${FANOUT:-2000 4000}"
SECS="${SECS:-10}"
PHASES="${PHASES:-1 2 3 4 5}"

log() { printf '==> %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in gcc ffmpeg curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
[[ -f "$BENCH_DIR/flvload.c" && -f "$BENCH_DIR/fanout.c" ]] ||
    { log "instruments missing: $BENCH_DIR/{flvload,fanout}.c (../shared/bench, not vendored)"; exit 2; }

WORK="$(mktemp -d /tmp/vantage-bench-rtmp-hls.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {
    local what="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}
# cpu_ticks PID... — utime+stime (clock ticks) summed over the processes.
cpu_ticks() {
    local total=0 pid f
    for pid in "$@"; do
        f=$(sed 's/.*) //' "/proc/$pid/stat")
        total=$((total + $(echo "$f" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)
cores() { python3 -c "print(f'{$1 / $HZ / $2:.3f}')"; }

apt_need() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]} == 0)) && return 0
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null || die "missing ${missing[*]} (needs root + apt-get)"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
apt_need nginx libnginx-mod-rtmp wrk
NGINX_MODULES=/usr/lib/nginx/modules

log "building release binaries"
cargo build --release --bin vantage-agent --bin vantage-scheduler >&2
AGENT_BIN="$TARGET_DIR/release/vantage-agent"
SCHED_BIN="$TARGET_DIR/release/vantage-scheduler"
# The RTMP and LL-HLS players of phases 4 and 5.
VIEWERS_BIN=$(cargo bench -p vantage-tests --bench viewers --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "viewers" and m.get("executable"):
        print(m["executable"])')
[[ -x "$VIEWERS_BIN" ]] || die "could not build tests/benches/viewers.rs"
gcc -O2 -o "$WORK/flvload" "$BENCH_DIR/flvload.c"
gcc -O2 -o "$WORK/fanout" "$BENCH_DIR/fanout.c"

SRC="$TARGET_DIR/bench-rtmp-hls/src-2mbps-av.flv"
if [[ ! -s "$SRC" ]]; then
    log "encoding a 30 s 2 Mbps H.264 + AAC FLV, 1 s GOP (once, cached at $SRC)"
    mkdir -p "$(dirname "$SRC")"
    timeout 300 ffmpeg -nostdin -hide_banner -loglevel error -y \
        -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440" \
        -c:v libx264 -preset veryfast -pix_fmt yuv420p -b:v 1900k -maxrate 1900k -bufsize 1000k \
        -x264-params nal-hrd=cbr -g 30 -c:a aac -b:a 96k -t 30 -f flv "$SRC.tmp"
    mv "$SRC.tmp" "$SRC"
fi
SRC_KBPS=$(($(stat -c %s "$SRC") * 8 / 30 / 1000))
log "source: $SRC ($SRC_KBPS kbps)"

# --- scheduler + agent -------------------------------------------------------------------------
SQ=$(free_port); SG=$(free_port); SH=$(free_port)
MEDIA=$(free_port); ADMIN=$(free_port); PROBE=$(free_port); RTMP=$(free_port)
"$SCHED_BIN" --dev --data-dir "$WORK/sched" --quic-listen "127.0.0.1:$SQ" --grpc-listen "127.0.0.1:$SG" \
    --http-listen "127.0.0.1:$SH" >"$WORK/sched.log" 2>&1 &
PIDS+=($!)
wait_for "scheduler" 30 curl -fsS "http://127.0.0.1:$SH/readyz"
RUST_LOG="${RUST_LOG:-warn}" "$AGENT_BIN" --node-id bench-1 --scheduler "127.0.0.1:$SQ" \
    --routes "https://127.0.0.1:$SG" --ca "$WORK/sched/dev/ca.pem" --token-file "$WORK/sched/dev/enroll.token" \
    --data-dir "$WORK/agent" --http-listen "127.0.0.1:$MEDIA" --admin-listen "127.0.0.1:$ADMIN" \
    --probe-listen "127.0.0.1:$PROBE" --rtmp-listen "127.0.0.1:$RTMP" --public-url "http://127.0.0.1:$MEDIA" \
    --hls-window-segments 60 --rtmp-max-connections 20000 ${AGENT_ARGS:-} \
    >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
wait_for "agent" 30 curl -fsS "http://127.0.0.1:$ADMIN/readyz"

# --- nginx (rtmp + static tmpfs) ------------------------------------------------------------------
NG_RTMP=$(free_port); NG_HTTP=$(free_port)
HLS_DIR="$(mktemp -d /dev/shm/vantage-bench-hls.XXXXXX)"
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
load_module $NGINX_MODULES/ngx_rtmp_module.so;
worker_processes 1;
daemon off;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 16384; }
rtmp { server { listen 127.0.0.1:$NG_RTMP; chunk_size 4096; application live { live on; } } }
http {
    access_log off;
    sendfile on; tcp_nopush on; keepalive_requests 1000000;
    types { video/mp4 m4s mp4; application/vnd.apple.mpegurl m3u8; }
    server { listen 127.0.0.1:$NG_HTTP; root $HLS_DIR; }
}
EOF
"$(command -v nginx)" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
wait_for "nginx" 30 curl -sS -o /dev/null "http://127.0.0.1:$NG_HTTP/"
sleep 1
nginx_pids() { echo "$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')"; }

RESULTS="$WORK/results.txt"
: >"$RESULTS"

# --- 1. RTMP ingest ------------------------------------------------------------------------------
ingest() {
    local name="$1" port="$2"; shift 2
    local pubs=() i
    for i in $(seq 1 "$PUBLISHERS"); do
        timeout 600 ffmpeg -nostdin -hide_banner -loglevel error -re -stream_loop -1 -i "$SRC" -c copy \
            -f flv "rtmp://127.0.0.1:$port/live/p$i" >"$WORK/pub-$name-$i.log" 2>&1 &
        pubs+=($!)
        PIDS+=($!)
    done
    sleep 4
    local c0 c1
    c0=$(cpu_ticks "$@")
    sleep "$SECS"
    c1=$(cpu_ticks "$@")
    local alive=0
    for i in "${pubs[@]}"; do kill -0 "$i" 2>/dev/null && alive=$((alive + 1)); done
    for i in "${pubs[@]}"; do kill "$i" 2>/dev/null || true; done
    local c mbps
    c=$(cores $((c1 - c0)) "$SECS")
    mbps=$(python3 -c "print(f'{$alive * $SRC_KBPS / 1000:.1f}')")
    echo "ingest|$name|$alive/$PUBLISHERS publishers|$mbps Mbps|$c cores|$(python3 -c "print(f'{$c * 1000 / max($mbps, 0.001):.2f}')") ms CPU per s per publisher-Mbps" | tee -a "$RESULTS" >&2
    sleep 2
}
if [[ " $PHASES " == *" 1 "* ]]; then
    log "1. RTMP ingest: $PUBLISHERS publishers × $SRC_KBPS kbps, ${SECS}s"
    ingest vantage-agent "$RTMP" "$AGENT_PID"
    ingest nginx-rtmp "$NG_RTMP" $(nginx_pids)
fi

# --- 2. LL-HLS ----------------------------------------------------------------------------------
if [[ " $PHASES " == *" 2 "* ]]; then
timeout 3600 ffmpeg -nostdin -hide_banner -loglevel error -re -stream_loop -1 -i "$SRC" -c copy \
    -f flv "rtmp://127.0.0.1:$RTMP/live/x" >"$WORK/publish.log" 2>&1 &
PIDS+=($!)
PL="http://127.0.0.1:$MEDIA/live/x/index.m3u8"
wait_for "the LL-HLS playlist" 30 curl -fsS "$PL"
sleep 3
playlist=$(curl -fsS "$PL")
seg=$(echo "$playlist" | grep -E '^seg[0-9]+\.m4s$' | tail -1)
part=$(echo "$playlist" | grep '^#EXT-X-PART:' | grep -oE 'seg[0-9]+\.[0-9]+\.m4s' | tail -1)
init=$(echo "$playlist" | grep -oE 'init[0-9]+\.mp4' | head -1)
for f in "$seg" "$part" "$init"; do curl -fsS -o "$HLS_DIR/$f" "http://127.0.0.1:$MEDIA/live/x/$f"; done
echo "$playlist" >"$HLS_DIR/index.m3u8"
chmod -R a+rX "$HLS_DIR"
log "2. LL-HLS: segment $seg ($(stat -c %s "$HLS_DIR/$seg") B), part $part ($(stat -c %s "$HLS_DIR/$part") B), $CONNS connections, ${SECS}s"
hls() {
    local name="$1" base="$2" file="$3"; shift 3
    local c0 c1 out
    c0=$(cpu_ticks "$@")
    out=$(wrk -t1 -c"$CONNS" -d"${SECS}s" "$base/$file" 2>&1)
    c1=$(cpu_ticks "$@")
    if echo "$out" | grep -q "Non-2xx"; then
        die "$name answered errors to GET $base/$file: $out"
    fi
    local rps c
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    c=$(cores $((c1 - c0)) "$SECS")
    python3 - "$name" "$file" "$rps" "$(stat -c %s "$HLS_DIR/$file")" "$c" <<'PY' | tee -a "$RESULTS" >&2
import sys
name, f, rps, size, c = sys.argv[1], sys.argv[2], float(sys.argv[3] or 0), int(sys.argv[4]), float(sys.argv[5])
gbps = rps * size * 8 / 1e9
c = max(c, 1e-3)
print(f"hls|{name}|{f}|{rps:.0f} req/s|{gbps:.2f} Gbit/s|{c:.2f} cores|{rps / c:.0f} req/s per core|{gbps / c:.2f} Gbit/s per core|{gbps / c * 1e3 / 2.0:.0f} 2-Mbps viewers per core")
PY
}
# The agent's runs first: its segmenter stops after --relay-idle-timeout-ms without HLS requests
# (and numbers segments afresh when it starts again).
hls vantage-agent "http://127.0.0.1:$MEDIA/live/x" "$seg" "$AGENT_PID"
hls vantage-agent "http://127.0.0.1:$MEDIA/live/x" "$part" "$AGENT_PID"
hls nginx-tmpfs "http://127.0.0.1:$NG_HTTP" "$seg" $(nginx_pids)
hls nginx-tmpfs "http://127.0.0.1:$NG_HTTP" "$part" $(nginx_pids)
fi

# --- 3-5. fan-out over the whole run: HTTP-FLV, RTMP play, LL-HLS against fanout.c -----------------
if [[ " $PHASES " == *" 3 "* || " $PHASES " == *" 4 "* || " $PHASES " == *" 5 "* ]]; then
FAN_SRC="$WORK/fanout-src.flv"
ffmpeg -nostdin -hide_banner -loglevel error -i "$SRC" -c copy -an -f flv "$FAN_SRC"
FAN_KBPS=$(($(stat -c %s "$FAN_SRC") * 8 / 30 / 1000))
timeout 3600 ffmpeg -nostdin -hide_banner -loglevel error -re -stream_loop -1 -i "$FAN_SRC" -c copy \
    -f flv "http://127.0.0.1:$MEDIA/live/f.flv" >"$WORK/publish-f.log" 2>&1 &
PIDS+=($!)
sleep 3
FAN_PORT=$(free_port)
"$WORK/fanout" "$FAN_PORT" "$FAN_SRC" "$FAN_KBPS" >"$WORK/fanout.log" 2>&1 &
FAN_PID=$!
PIDS+=("$FAN_PID")
sleep 1
# The agent's own counters: bytes handed to viewers and slow-viewer skips.
agent_counter() {
    curl -fsS "http://127.0.0.1:$ADMIN/metrics" |
        awk -v m="vantage_agent_$1" '$1 == m { print $2 }'
}
# whole NAME N LOAD PIDS... — LOAD (a command that prints flvload's line) while N viewers join at
# once; CPU of PIDS from before the first connect to after the last byte.
whole() {
    local name="$1" n="$2" load="$3"; shift 3
    local c0 c1 t0 t1 out b0 b1 s0 s1 extra=""
    [[ "$name" == vantage-agent* ]] && { b0=$(agent_counter relay_egress_bytes_total); s0=$(agent_counter relay_viewer_skips_total); }
    c0=$(cpu_ticks "$@"); t0=$(date +%s.%N)
    out=$($load 2>/dev/null | tail -1)
    c1=$(cpu_ticks "$@"); t1=$(date +%s.%N)
    if [[ "$name" == vantage-agent* ]]; then
        b1=$(agent_counter relay_egress_bytes_total); s1=$(agent_counter relay_viewer_skips_total)
        extra=$(python3 -c "print(f'|egress {(${b1:-0} - ${b0:-0}) / 1e6:.0f} MB, skips {${s1:-0} - ${s0:-0}:.0f}')")
    fi
    local secs c
    secs=$(python3 -c "print($t1 - $t0)")
    c=$(python3 -c "print(f'{($c1 - $c0) / $HZ:.2f}')")
    echo "fanout|$name|$n viewers|whole run ${secs%.*}s|$c CPU-seconds|$out$extra" | tee -a "$RESULTS" >&2
    sleep 3
}
for n in $FANOUT; do
    log "3-5. fan-out ($FAN_KBPS kbps, video only), whole run: $n viewers joining at once"
    [[ " $PHASES " == *" 3 "* ]] &&
        whole vantage-agent "$n" "$WORK/flvload 127.0.0.1 $MEDIA /live/f.flv $n $SECS" "$AGENT_PID"
    [[ " $PHASES " == *" 4 "* ]] &&
        whole vantage-agent-rtmp-play "$n" "$VIEWERS_BIN rtmp 127.0.0.1:$RTMP live/f $n $SECS" "$AGENT_PID"
    [[ " $PHASES " == *" 5 "* ]] &&
        whole vantage-agent-ll-hls "$n" "$VIEWERS_BIN hls 127.0.0.1:$MEDIA live/f $n $SECS" "$AGENT_PID"
    whole fanout.c "$n" "$WORK/flvload 127.0.0.1 $FAN_PORT /live/f.flv $n $SECS" "$FAN_PID"
done
fi

echo
cat "$RESULTS"
rm -rf "$HLS_DIR"
