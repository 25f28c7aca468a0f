#!/usr/bin/env bash
# Head-of-line blocking: on -w 2, fast requests at FAST per second (GET /, 32 keep-alive
# connections) beside SLOW per second that block 50 ms in the application (GET
# /sleep?ms=50, 4 connections), open loop (mixed.c). Reports the fast requests' p50, p99 and
# p99.9 for srv as it starts by default, srv --threads 4, and Gunicorn's sync and gthread
# workers when gunicorn is installed, in ROUNDS alternating rounds; medians.
# Usage: mixed.sh [SECONDS] [FAST] [SLOW]
set -u
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-10}; fast=${2:-1000}; slow=${3:-10}; rounds=${ROUNDS:-3}
. "$here/lib.sh"
app="$plugins/libconformance.so"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/mixed" "$here/mixed.c" || { echo "mixed.c did not build"; exit 1; }
round() { # name port command...
  local name=$1 port=$2; shift 2
  "$@" >"$tmp/$name.log" 2>&1 & local pid=$!
  wait_port "$port"
  local out; out=$("$tmp/mixed" "$port" "$secs" "$fast" / 32 "$slow" "/sleep?ms=50" 4)
  stop_server "$pid" "$port"
  echo "$name $out"
}
gunicorn=$(command -v gunicorn || true)
rows=$(for _ in $(seq "$rounds"); do
  round srv-default 18088 "$srv" --app "$app" -b 127.0.0.1:18088 -w 2 --log-level error
  round srv-threads-4 18088 "$srv" --app "$app" -b 127.0.0.1:18088 -w 2 --threads 4 --log-level error
  if [ -n "$gunicorn" ]; then
    round gunicorn-sync 18089 "$gunicorn" --chdir "$here/peers/wsgi" -w 2 -b 127.0.0.1:18089 hello:app
    round gunicorn-gthread-4 18089 "$gunicorn" --chdir "$here/peers/wsgi" -w 2 -k gthread --threads 4 -b 127.0.0.1:18089 hello:app
  fi
done)
python3 - "$rows" <<'PY'
import statistics, sys
runs = {}
for line in sys.argv[1].splitlines():
    f = line.split()
    # name fast N p50 X p99 Y p99.9 Z max M ms; slow N p50 S ms; errors E
    runs.setdefault(f[0], []).append((float(f[4]), float(f[6]), float(f[8]), int(f[2]), int(f[18])))
    print("   " + line)
for name, v in runs.items():
    med = [statistics.median(r[i] for r in v) for i in range(3)]
    print(f"{name:19} fast requests: p50 {med[0]:7.2f} ms  p99 {med[1]:7.2f} ms  p99.9 {med[2]:7.2f} ms (medians of {len(v)});"
          f" answered {sum(r[3] for r in v)}, errors {sum(r[4] for r in v)}")
PY
