#!/usr/bin/env bash
# User-space instructions per request of one server, counted by callgrind (the machine's
# noise does not move them, unlike wall or CPU time).
#
#   callgrind.sh [options] -- SRV_ARGS...       srv (SRV, default .build/release/srv) with these flags
#   callgrind.sh [options] -- COMMAND ARGS...   any server command (nginx -c ..., kore ...)
#
# The command runs under `valgrind --tool=callgrind --trace-children=yes`, so srv's master
# and each worker it re-execs get a callgrind process and an output file per pid (a child
# forked without exec, such as nginx's worker, cannot be reached: run such a server as one
# process, nginx -g 'master_process off;'). Once the server answers, the client opens its
# connections and sends WARMUP requests; then every process's counters are zeroed
# (callgrind_control -z), exactly N requests are sent, and every process is dumped
# (callgrind_control -d) before any connection closes. An idle window of the same wall
# length follows (zero, sleep, dump), so the instructions the server spends on timers
# (heartbeat, date cache, scoreboard) can be told apart from those of the requests:
#   instructions/request = (Ir of the load - Ir of the idle window) / N
# for the worker: the process that executed the most instructions during the load, or the
# processes whose command lines match --worker REGEX, summed.
#
# The client (Python, raw sockets) keeps one request in flight per connection: it sends a
# request, reads the whole response (Content-Length or chunked), checks the status and
# sends the next; so each request is one read for the server, as with wrk.
#
# Options:
#   --requests N      requests measured (default 20000)
#   --connections C   keep-alive connections, N spread over them (default 1)
#   --warmup W        requests before the counters are zeroed (default 2000)
#   --addr HOST:PORT  where to send them (default: the command's first -b/--bind, else 127.0.0.1:18580)
#   --path PATH       request target (default /)
#   -H 'Name: value'  an extra request header (repeatable)
#   --worker REGEX    the worker is every process whose command line matches, summed (srv -w 2:
#                     --worker 'srv worker'); by default the one that ran the most instructions
#   --no-idle         skip the idle window
#   --out DIR         keep the callgrind files here (default: a new temporary directory, kept)
#   --scrape URL      curl URL after the measurement, before the server stops (saved in DIR/scrape.txt)
#   --settle S        seconds to wait after the first answer, for other workers to boot (default 1)
#   --random-hashing  leave Swift's per-process hash seed random; by default the server runs
#                     with SWIFT_DETERMINISTIC_HASHING=1, since the seed moves srv's count by
#                     about 10 instructions per request between runs (dictionary probes in
#                     NIO's selector); it does nothing to non-Swift servers
# Environment: SRV (srv's binary; a copy is stripped with `strip -g` unless it is already
# stripped, since valgrind chokes on srv's debug info), VALGRIND_OPTS (passed to valgrind).
# Prints one line per process, then `instructions/request: X` for the worker.
# Examples:
#   callgrind.sh -- --app build/plugins/libhello.so -b 127.0.0.1:18580 -w 1 --log-level warning
#   callgrind.sh -- --app build/plugins/libhello.so -b 127.0.0.1:18580 -w 1 --log-level warning --metrics-bind 127.0.0.1:18590
#   callgrind.sh --addr 127.0.0.1:18081 -- nginx -c "$PWD/Tests/bench/peers/nginx/nginx.conf" -g 'master_process off;'
# The function profile of a run: callgrind_annotate --inclusive=no DIR/callgrind.out.PID.1
# (functions still on the stack at the dump, such as the event loop's, show their
# inclusive cost there; read the rest as self cost).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
requests=20000 conns=1 warmup=2000 addr="" path=/ worker_re="" idle=1 out="" scrape="" settle=1 hashing=deterministic
headers=()
usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-64}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --connections) conns=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --addr) addr=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    -H) headers+=("$2"); shift 2 ;;
    --worker) worker_re=$2; shift 2 ;;
    --no-idle) idle=0; shift ;;
    --out) out=$2; shift 2 ;;
    --scrape) scrape=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    --random-hashing) hashing=random; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "callgrind.sh: unknown option $1" >&2; usage ;;
  esac
done
[ $# -gt 0 ] || usage
for tool in valgrind callgrind_control python3 curl; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: needs $tool (apt-get install valgrind python3 curl)" >&2; exit 1; }
done

out=${out:-$(mktemp -d /tmp/callgrind.XXXXXX)}
mkdir -p "$out"; rm -f "$out"/callgrind.out.*
cmd=("$@")
if [ "${cmd[0]#-}" != "${cmd[0]}" ]; then  # only flags: they are srv's
  srv=${SRV:-$root/.build/release/srv}
  [ -x "$srv" ] || { echo "callgrind.sh: no srv at $srv (set SRV)" >&2; exit 1; }
  if readelf -S "$srv" 2>/dev/null | grep -q '\.debug_info'; then
    cp "$srv" "$out/srv" && strip -g "$out/srv" && srv="$out/srv"
  fi
  cmd=("$srv" "${cmd[@]}")
fi
if [ -z "$addr" ]; then
  for ((i = 0; i < ${#cmd[@]} - 1; i++)); do
    case ${cmd[i]} in -b|--bind) addr=${cmd[i+1]}; break ;; esac
  done
  addr=${addr:-127.0.0.1:18580}
fi
case $addr in unix:*) echo "callgrind.sh: TCP addresses only (--addr HOST:PORT)" >&2; exit 64 ;; esac

echo "== callgrind: ${cmd[*]}"
echo "== $requests requests on $conns connection(s) to http://$addr$path after $warmup warm-up requests, $hashing hashing; files in $out"
[ "$hashing" = random ] || export SWIFT_DETERMINISTIC_HASHING=1
valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/callgrind.out.%p" \
  "${cmd[@]}" >"$out/server.log" 2>&1 &
vg=$!
stop() {
  kill -TERM "$vg" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$vg" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$vg" 2>/dev/null; wait "$vg" 2>/dev/null
}
trap stop EXIT

# The callgrind processes of this run: each created its output file at start.
pids() { for f in "$out"/callgrind.out.*; do f=${f##*/callgrind.out.}; case $f in *.*|\*) ;; *) echo "$f" ;; esac; done | sort -n; }
control() { # -z | -d: every process of this run that is still alive
  local p; for p in $(pids); do kill -0 "$p" 2>/dev/null && callgrind_control "$1" "$p" >/dev/null 2>&1; done; true
}
# The Ir of each process's K-th dump (1 the load, 2 the idle window): "pid Ir command".
totals() { # K
  local p f; for p in $(pids); do
    f="$out/callgrind.out.$p.$1"
    [ -f "$f" ] || continue
    echo "$p $(awk '/^(summary|totals):/ {print $2; exit}' "$f") $(sed -n 's/^cmd: *//p' "$f" | head -1)"
  done
}

up=0
for _ in $(seq 600); do
  kill -0 "$vg" 2>/dev/null || break
  curl -s -o /dev/null -m 5 "http://$addr$path" && { up=1; break; }
  sleep 0.2
done
[ "$up" = 1 ] || { echo "callgrind.sh: the server did not answer at $addr; its log:" >&2; tail -20 "$out/server.log" >&2; exit 1; }
sleep "$settle"

# Runs BEFORE (zero) once the connections are warm, then N requests, then AFTER (dump);
# prints the seconds the N requests took.
client() {
python3 - "$addr" "$path" "$requests" "$conns" "$warmup" "$out" "${headers[@]}" <<'PY'
import os, selectors, socket, subprocess, sys, time
addr, path, n, conns, warmup, out = sys.argv[1:7]
headers = sys.argv[7:]
n, conns, warmup = int(n), int(conns), int(warmup)
host, port = addr.rsplit(":", 1)
host = host.strip("[]")
req = (f"GET {path} HTTP/1.1\r\nHost: {addr}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()

class Conn:
    def __init__(self):
        self.s = socket.create_connection((host, int(port)))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
    def send(self):
        self.s.sendall(req)
    def response(self):
        """The length of the first complete response in buf and its status, or None."""
        b = self.buf
        end = b.find(b"\r\n\r\n")
        if end < 0: return None
        head = b[:end].split(b"\r\n")
        status = int(head[0].split()[1])
        fields = {}
        for line in head[1:]:
            k, _, v = line.partition(b":")
            fields[k.strip().lower()] = v.strip()
        body = end + 4
        if b"content-length" in fields:
            total = body + int(fields[b"content-length"])
            return (total, status) if len(b) >= total else None
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            i = body
            while True:
                e = b.find(b"\r\n", i)
                if e < 0: return None
                size = int(b[i:e].split(b";")[0], 16)
                if size == 0:  # the last chunk, then trailers up to an empty line
                    t = b.find(b"\r\n\r\n", e)
                    return (t + 4, status) if t >= 0 else None
                i = e + 2 + size + 2
                if len(b) < i: return None
        if status in (204, 304) or 100 <= status < 200:
            return (body, status)
        sys.exit(f"callgrind.sh: a response with neither Content-Length nor chunked: {head[0]!r}")

def run(conns_, count):
    """Sends count requests over conns_, one in flight per connection; returns non-2xx count."""
    sel = selectors.DefaultSelector()
    sent = done = bad = 0
    for c in conns_:
        if sent < count:
            c.send(); sent += 1
            sel.register(c.s, selectors.EVENT_READ, c)
    while done < count:
        for key, _ in sel.select():
            c = key.data
            data = c.s.recv(65536)
            if not data: sys.exit("callgrind.sh: the server closed a connection")
            c.buf += data
            while (r := c.response()) is not None:
                c.buf = c.buf[r[0]:]
                done += 1
                if not 200 <= r[1] < 300: bad += 1
                if sent < count:
                    c.send(); sent += 1
    sel.close()
    return bad

def control(flag):  # every callgrind process of this run that is still alive
    for f in os.listdir(out):
        pid = f[len("callgrind.out."):]
        if f.startswith("callgrind.out.") and pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            subprocess.run(["callgrind_control", flag, pid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

cs = [Conn() for _ in range(conns)]
bad = run(cs, warmup)
control("-z")
t0 = time.monotonic()
bad += run(cs, n)
t1 = time.monotonic()
control("-d")
for c in cs: c.s.close()
if bad: print(f"callgrind.sh: {bad} responses were not 2xx", file=sys.stderr)
print(f"{t1 - t0:.3f}")
PY
}
secs=$(client) || exit 1
# A child that a server fork()s without exec (nginx's workers) has no callgrind output file
# and callgrind_control cannot reach it; only processes that exec'd (srv's workers) can.
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
forked=()
for p in $(descendants "$vg"); do
  [ -e "$out/callgrind.out.$p" ] || forked+=("$p")
done
for p in "${forked[@]}"; do
  echo "callgrind.sh: warning: pid $p ($(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null | cut -c1-60)) is a forked child callgrind_control cannot reach; run the server as one process (nginx: -g 'master_process off;')" >&2
done
sleep 0.5
load=$(totals 1)
[ -z "$scrape" ] || curl -s "$scrape" >"$out/scrape.txt"
idle_rows=""
if [ "$idle" = 1 ]; then
  control -z; sleep "$secs"; control -d; sleep 0.5
  idle_rows=$(totals 2)
fi
stop; trap - EXIT
# Such a child leaves its gdbserver FIFOs behind in /tmp (it cannot remove them after setuid).
for p in "${forked[@]}"; do kill -0 "$p" 2>/dev/null || rm -f /tmp/vgdb-pipe-*-"$p"-by-*; done

python3 - "$requests" "$secs" "$worker_re" "$out" "$load" "$idle_rows" <<'PY'
import re, sys
n, secs, worker_re, out, load, idle = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
def rows(text):
    r = {}
    for line in text.splitlines():
        pid, ir, *cmd = line.split(" ", 2)
        r[pid] = (int(ir), cmd[0] if cmd else "")
    return r
L, I = rows(load), rows(idle)
def dump(pid, k):  # the k-th dump of pid: 1 the load, 2 the idle window
    return f"{out}/callgrind.out.{pid}.{k}"
print(f"load: {n} requests in {secs:.1f} s (under callgrind); idle window {secs:.1f} s" if I else f"load: {n} requests in {secs:.1f} s (under callgrind)")
for pid, (ir, cmd) in sorted(L.items(), key=lambda x: -x[1][0]):
    i = I.get(pid, (0, ""))[0]
    print(f"pid {pid:>7}  load Ir {ir:>13,}  idle Ir {i:>11,}  ({ir / n:10,.1f} - {i / n:8,.1f} per request)  {cmd}")
if worker_re:  # every matching process, summed (-w 2 and more)
    ws = [p for p in L if re.search(worker_re, L[p][1])]
    if not ws: sys.exit(f"callgrind.sh: no process matches --worker {worker_re}")
else:
    ws = [max(L, key=lambda p: L[p][0])]
ir, i = sum(L[w][0] for w in ws), sum(I.get(w, (0, ""))[0] for w in ws)
if ir == 0: sys.exit("callgrind.sh: the worker counted no instructions (a forked child? see the warning above)")
for w in ws:
    print(f"worker: pid {w} ({L[w][1]}); load dump {dump(w, 1)}" + (f", idle dump {dump(w, 2)}" if I else ""))
print(f"worker Ir/request: {ir / n:.1f} raw, idle {i / n:.1f}, net {(ir - i) / n:.1f}")
print(f"instructions/request: {(ir - i) / n:.0f}")
PY
