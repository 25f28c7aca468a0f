#!/usr/bin/env bash
# 10,000 keep-alive connections at once (wrk -t1 -c10000 --timeout 5s), one worker each:
# nginx against srv (hello.so, --backlog 4096) in ROUNDS alternating rounds, the server on
# core 0 and wrk on core 1 when there are two. Reported per round: req/s, p99, wrk's errors
# and timeouts, and how long connections waited in the listen queue (its length every
# 0.25 s of the first 2 s: a queue that stays full means clients that are never served).
# Usage: connections.sh [SECONDS] [CONNECTIONS]
set -u
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-10}; conns=${2:-10000}; rounds=${ROUNDS:-3}
. "$here/lib.sh"
need=$((conns + 1000))
if [ "$(ulimit -n)" -lt "$need" ]; then ulimit -n "$need" 2>/dev/null || { echo "skipped: wrk needs ulimit -n $need (it is $(ulimit -n))"; exit 0; }; fi
server_cpu=(); client_cpu=()
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); client_cpu=(taskset -c 1); fi
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections $need; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:18081 backlog=4096;
        location / { default_type text/plain; return 200 "Hello, World!\n"; }
    }
}
CONF
round() { # name port command...
  local name=$1 port=$2; shift 2
  "${server_cpu[@]}" "$@" >"$tmp/$name.log" 2>&1 & local pid=$!
  wait_port "$port"
  "${client_cpu[@]}" wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s --latency "http://127.0.0.1:$port/" >"$tmp/wrk" 2>&1 & local w=$!
  local q=""
  for _ in 1 2 3 4 5 6 7 8; do sleep 0.25; q="$q$(ss -Hltn "sport = :$port" | awk '{print $2}'),"; done
  wait "$w"; stop_server "$pid" "$port"
  local errs; errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$tmp/wrk")
  echo "$name $(awk '/Requests\/sec/ {print $2}' "$tmp/wrk") $(awk '$1=="99%" {print $2}' "$tmp/wrk") ${errs:-0} ${q%,}"
}
rows=$(for _ in $(seq "$rounds"); do
  round nginx 18081 nginx -c "$tmp/nginx.conf"
  round srv 18080 "$srv" --app "$plugins/libhello.so" -b 127.0.0.1:18080 -w 1 --backlog 4096 --log-level error
done)
python3 - "$rows" <<'PY'
import statistics, sys
def ms(v):
    return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
runs = {}
for line in sys.argv[1].splitlines():
    name, rps, p99, errs, queue = line.split()
    runs.setdefault(name, []).append((float(rps), ms(p99), int(errs), queue))
    print(f"{name:6} {float(rps):9,.0f} req/s  p99 {ms(p99):7.1f} ms  errors+timeouts {int(errs):5}  listen queue every 0.25 s: {queue}")
med = {n: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), sum(r[2] for r in v)) for n, v in runs.items()}
for n, (rps, p99, errs) in med.items():
    print(f"{n:6} median {rps:9,.0f} req/s  p99 median {p99:.1f} ms  errors+timeouts in all rounds {errs}")
if "srv" in med and "nginx" in med:
    print(f"srv/nginx at 10k connections: throughput {med['srv'][0] / med['nginx'][0]:.2f}x, p99 {med['srv'][1]:.0f} ms against {med['nginx'][1]:.0f} ms")
PY
