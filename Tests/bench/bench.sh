#!/usr/bin/env bash
# srv beside real peers on this machine, one worker each, measured with wrk in one run:
#  1. keep-alive hello world (wrk -t1 -c64): nginx, kore, gunicorn, uWSGI and srv (hello.so);
#     1b alternates nginx, kore, nio-floor and srv for ROUNDS rounds; 1c sends a request
#     with a browser's headers to nginx and srv;
#  2. a 1 MiB file body: srv (SRV_BODY_FILE, sendfile) against nginx serving the same file;
#  3. srv's worker RSS idle and under load;
#  4. 10,000 connections at once (connections.sh): nginx and srv, errors, p99, listen queue;
#  5. recycling (recycling.sh): a worker start's CPU, and what --max-requests 1000 costs on -w 2;
#  6. head-of-line blocking (mixed.sh, mixed.c): fast requests' tail beside slow ones, srv
#     inline and on threads against Gunicorn's sync and gthread workers;
#  7. instructions per request (instructions.sh): srv and nginx under callgrind, same client.
# Peer setups are peers/ (a copy of the team's shared/peers). Usage: bench.sh [SECONDS] [CONNECTIONS]
set -u
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-10}; conns=${2:-64}
. "$here/lib.sh"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== 1. hello world, keep-alive, wrk -t1 -c$conns -d${secs}s"
"$here/peers/bench.sh" "$secs" "$conns" "$srv --app $plugins/libhello.so -b 127.0.0.1:18080 -w 1 --log-level warning"

# One run per server is at the mercy of this shared machine's neighbours (the same server
# moves 15% between runs, and now and then a run halves). Rounds that alternate the three
# servers see the same conditions; the medians are the figures to compare.
rounds=${ROUNDS:-5}
# nio-floor is SwiftNIO alone answering with srv's bytes (no parsing, no application):
# the fastest an NIO-based worker can be here. srv above it is srv's own cost.
echo "== 1b. hello world, $rounds alternating rounds of nginx, kore, nio-floor and srv, ${secs}s each; medians"
kdir=$(mktemp -d)/kore; mkdir -p "$kdir"; cp -r "$here/peers/kore/." "$kdir"; (cd "$kdir" && kodev build >/dev/null 2>&1)
swift build -c release --package-path "$here/nio-floor" >/dev/null 2>&1 || echo "nio-floor did not build; its rows are left out"
floor="$here/nio-floor/.build/release/nio-floor"
# CPU time of a process and its descendants (clock ticks), to report CPU per request:
# unlike req/s it barely moves with the neighbours' load.
ticks() { # pid
  local t c
  t=$(awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0)
  for c in $(pgrep -P "$1"); do t=$((t + $(ticks "$c"))); done
  echo "${t:-0}"
}
hz=$(getconf CLK_TCK)
hdrs=()  # extra request headers for wrk (section 1c)
round() { # name port command...
  local name=$1 port=$2; shift 2
  "$@" >/dev/null 2>&1 & local pid=$!
  wait_port "$port"
  wrk -t1 -c"$conns" -d1s "${hdrs[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1
  local before; before=$(ticks "$pid")
  local out; out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency "${hdrs[@]}" "http://127.0.0.1:$port/" 2>&1)
  local after; after=$(ticks "$pid")
  stop_server "$pid" "$port"
  local n; n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$name $(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '$1=="99%" {print $2}' <<<"$out") $(( (after - before) * 1000000 / hz )) ${n:-1}"
}
summarize() { # rows
python3 - "$1" <<'PY'
import statistics, sys
def ms(v):
    return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
runs = {}
for line in sys.argv[1].splitlines():
    name, rps, p99, cpu_us, n = line.split()
    runs.setdefault(name, []).append((float(rps), ms(p99), int(cpu_us) / int(n)))
med = {n: tuple(statistics.median(r[i] for r in v) for i in range(3)) for n, v in runs.items()}
for n, v in runs.items():
    print(f"{n:9} req/s " + " ".join(f"{r:9,.0f}" for r, _, _ in v)
          + f"   median {med[n][0]:9,.0f}   p99 median {med[n][1]:.2f} ms   CPU {med[n][2]:.2f} us/request")
s = med["srv"]
for peer in [p for p in ("nginx", "kore", "nio-floor") if p in med]:
    print(f"srv/{peer}: throughput {s[0] / med[peer][0]:.2f}x, p99 {s[1]:.2f} ms against {med[peer][1]:.2f} ms,"
          f" CPU per request {s[2]:.2f} us against {med[peer][2]:.2f} us")
PY
}
rows=$(for r in $(seq "$rounds"); do
  round nginx 18081 nginx -c "$here/peers/nginx/nginx.conf"
  round kore 18082 sh -c "cd '$kdir' && exec kore -f -r -c conf/kore.conf"
  [ -x "$floor" ] && round nio-floor 18096 "$floor" 18096
  round srv 18080 "$srv" --app "$plugins/libhello.so" -b 127.0.0.1:18080 -w 1 --log-level warning
done)
rm -rf "${kdir%/kore}"
summarize "$rows"

# Hello world has one header; real browsers send a dozen, which every server must parse.
echo "== 1c. a browser's request (11 more headers, 560 bytes), ${ROUNDS_BROWSER:-3} alternating rounds of nginx and srv, ${secs}s each; medians"
hdrs=("${browser_headers[@]}")
rows=$(for r in $(seq "${ROUNDS_BROWSER:-3}"); do
  round nginx 18081 nginx -c "$here/peers/nginx/nginx.conf"
  round srv 18080 "$srv" --app "$plugins/libhello.so" -b 127.0.0.1:18080 -w 1 --log-level warning
done)
summarize "$rows"
hdrs=()

echo "== 2. 1 MiB file body, wrk -t1 -c$conns -d${secs}s"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
head -c 1048576 /dev/urandom > "$tmp/file.bin"; chmod 644 "$tmp/file.bin"
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:18091; root $tmp; }
}
CONF
measure() { # name url
  for _ in $(seq 100); do curl -sf -o /dev/null "$2" && break; sleep 0.1; done
  wrk -t1 -c"$conns" -d1s "$2" >/dev/null 2>&1
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency "$2" 2>&1)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  tput=$(awk '/Transfer\/sec/ {print $2}' <<<"$out")
  errs=$(grep -E "Socket errors|Non-2xx" <<<"$out" | tr -s ' ' | tr '\n' ';')
  printf '%-12s %10s req/s  %10s/s  p99 %8s  %s\n' "$1" "$rps" "$tput" "$p99" "$errs"
  eval "rps_$3=$rps"
}
nginx -c "$tmp/nginx.conf" >/dev/null 2>&1 &
measure nginx-file "http://127.0.0.1:18091/file.bin" nginx
kill %1 2>/dev/null; wait 2>/dev/null
"$srv" --app "$plugins/libconformance.so" -b 127.0.0.1:18092 -w 1 --log-level warning >/dev/null 2>&1 &
measure srv-file "http://127.0.0.1:18092/file?path=$tmp/file.bin" srv
awk -v s="${rps_srv:-0}" -v n="${rps_nginx:-1}" 'BEGIN { printf "ratio: srv/nginx (1 MiB file) %.2f\n", s/n }'
kill %1 2>/dev/null; wait 2>/dev/null

echo "== 3. srv worker memory (hello.so)"
"$srv" --app "$plugins/libhello.so" -b 127.0.0.1:18093 -w 1 --log-level warning >/dev/null 2>&1 &
master=$!
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18093/ && break; sleep 0.1; done
worker=$(pgrep -P "$master" | head -1)
rss() { awk '/VmRSS/ {print $2 " " $3}' "/proc/$worker/status"; }
echo "idle RSS:       $(rss)"
wrk -t1 -c"$conns" -d"${secs}s" http://127.0.0.1:18093/ >/dev/null 2>&1 &
sleep $((secs / 2)); echo "under load RSS: $(rss)"; wait %2 2>/dev/null
kill "$master" 2>/dev/null

echo "== 4. 10,000 keep-alive connections, wrk -t1 -c10000 --timeout 5s, ${ROUNDS_CONNECTIONS:-3} alternating rounds of nginx and srv"
ROUNDS=${ROUNDS_CONNECTIONS:-3} "$here/connections.sh" "$secs" 10000

echo "== 5. recycling: one worker start's CPU, and -w 2 throughput with --max-requests 1000 against none (${ROUNDS_RECYCLING:-3} alternating rounds)"
ROUNDS=${ROUNDS_RECYCLING:-3} "$here/recycling.sh" "$secs"

echo "== 6. head-of-line blocking: -w 2, 1000 fast requests/s beside 10/s that block 50 ms, open loop (${ROUNDS_MIXED:-3} alternating rounds)"
ROUNDS=${ROUNDS_MIXED:-3} "$here/mixed.sh" "$secs"

echo "== 7. user-space instructions per request (callgrind), srv beside nginx, hello and browser-sized"
"$here/instructions.sh"
