#!/usr/bin/env bash
# What recycling workers costs (--max-requests), hello.so:
#  a. the CPU of one worker start: -w 1 --max-requests 1, N requests one after another (each
#     retires its worker, and the master starts the next); the CPU of the master and of every
#     worker it reaped (/proc/PID/stat: utime, stime, cutime, cstime) divided by N;
#  b. throughput on -w 2 with --max-requests 1000 against none, wrk -t1 -c64, ROUNDS
#     alternating rounds; medians and their ratio.
# Usage: recycling.sh [SECONDS] [N]
set -u
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-10}; n=${2:-200}; rounds=${ROUNDS:-3}
. "$here/lib.sh"
app="$plugins/libhello.so"
hz=$(getconf CLK_TCK)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT
cpu() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }

"$srv" --app "$app" -b 127.0.0.1:18094 -w 1 --max-requests 1 --log-level error >/dev/null 2>&1 & started=$!
wait_port 18094
master=$(pgrep -f -n "^$srv --app $app -b 127.0.0.1:18094")  # the master, whatever $! is
sleep 1
before=$(cpu "$master")
for _ in $(seq "$n"); do curl -s -o /dev/null http://127.0.0.1:18094/; done
sleep 1  # the last replacement boots and is reaped into cutime
after=$(cpu "$master")
stop_server "$started" 18094
awk -v t=$((after - before)) -v hz="$hz" -v n="$n" 'BEGIN { printf "a. one worker start (and its one request): %.1f ms of CPU, master and worker together (%d starts)\n", t * 1000 / hz / n, n }'

round() { # label args...
  local label=$1; shift
  "$srv" --app "$app" -b 127.0.0.1:18095 -w 2 --log-level error "$@" >/dev/null 2>&1 & local m=$!
  wait_port 18095
  wrk -t1 -c64 -d1s http://127.0.0.1:18095/ >/dev/null 2>&1
  local out; out=$(wrk -t1 -c64 -d"${secs}s" --latency http://127.0.0.1:18095/ 2>&1)
  stop_server "$m" 18095
  local errs; errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
  echo "$label $(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '$1=="99%" {print $2}' <<<"$out") ${errs:-0}"
}
rows=$(for _ in $(seq "$rounds"); do round none; round max-requests-1000 --max-requests 1000; done)
python3 - "$rows" <<'PY'
import statistics, sys
def ms(v):
    return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
runs = {}
for line in sys.argv[1].splitlines():
    name, rps, p99, errs = line.split()
    runs.setdefault(name, []).append((float(rps), ms(p99), int(errs)))
for name, v in runs.items():
    print(f"b. -w 2, {name:17} req/s " + " ".join(f"{r:9,.0f}" for r, _, _ in v)
          + f"   median {statistics.median(r for r, _, _ in v):9,.0f}   p99 median {statistics.median(p for _, p, _ in v):.2f} ms   errors {sum(e for _, _, e in v)}")
a, b = (statistics.median(r for r, _, _ in runs[k]) for k in ("none", "max-requests-1000"))
print(f"recycling with --max-requests 1000 keeps {b / a:.2f}x of the throughput (goal: 0.90x or more)")
PY
