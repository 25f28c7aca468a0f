"""The master process (the arbiter): reloads, worker supervision, signals, status,
configuration and systemd integration, each driven through the real binary.

Every test that claims "0 failed requests" runs a `Load` next to what it does: threads
that keep sending GET requests over keep-alive connections (and a few over fresh
connections, which also proves the listening socket stays open), and that record every
request that did not get the expected 200.
"""
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import SRV, Conn, Server, free_port, pid_alive, plugin, read_status, request, wait_until  # noqa: F401 (pid_alive: test_master_lifecycle imports it from here)

V1 = b"conformance 1.0.0\n"
V2 = b"conformance 2.0.0\n"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

class Load:
    """Continuous GET traffic from threads: `conns` keep-alive connections and `fresh`
    threads that open a new connection for every request.

    A request fails when it does not end in a 200 whose body `expect` accepts. The one
    thing that is not a failure is HTTP/1.1's keep-alive race: the server closed an idle
    connection (a retiring worker does) just as we reused it. A connection seen closed
    before sending is simply replaced; a reused connection that ends without a single byte
    of response is retried once on a fresh connection and counted in `stale` (a client
    retries an idempotent request then, RFC 9112 9.3.1). Everything else is a failure."""

    def __init__(self, port, conns=16, fresh=2, path="/", expect=None, pause=0.005):
        self.port, self.path, self.pause = port, path, pause
        self.expect = expect or (lambda body: True)
        self.lock = threading.Lock()
        self.ok = 0
        self.stale = 0
        self.failures = []
        self.bodies = {}
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(conns)]
        self.threads += [threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(fresh)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)

    def _fail(self, what):
        with self.lock:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {what}")

    def _record(self, r):
        with self.lock:
            self.ok += 1
            self.bodies[r.body] = self.bodies.get(r.body, 0) + 1

    def _once(self, conn, close):
        h = f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if close:
            h += "Connection: close\r\n"
        conn.send(h + "\r\n")
        return conn.read_response()

    def _check(self, r):
        if r.status != 200 or not self.expect(r.body):
            self._fail(f"got {r.status} {r.body[:80]!r}")
            return False
        self._record(r)
        return True

    def _run(self, fresh):
        conn, reused = None, False
        while not self.stopping.is_set():
            what = "fresh connection" if fresh else "keep-alive connection"
            try:
                if conn is not None and reused and _closed_by_peer(conn):
                    conn.close()
                    conn = None
                if conn is None:
                    try:
                        conn = Conn(self.port, timeout=15)
                    except OSError as e:
                        self._fail(f"connect: {e!r}")
                        time.sleep(0.05)
                        continue
                    reused = False
                what += " (reused)" if reused else " (new)"
                try:
                    r = self._once(conn, fresh)
                except (EOFError, ConnectionResetError, BrokenPipeError):
                    if reused and conn.buf == b"":
                        # The keep-alive race: retry once on a fresh connection.
                        with self.lock:
                            self.stale += 1
                        conn.close()
                        what = "retry on a new connection"
                        conn = Conn(self.port, timeout=15)
                        reused = False
                        r = self._once(conn, fresh)
                    else:
                        raise
                self._check(r)
                reused = True
                if fresh or (r.header("Connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every error is a failed request
                self._fail(f"{what}: {e!r}" + (f" after {len(conn.buf)} bytes" if conn is not None and conn.buf else ""))
                if conn is not None:
                    conn.close()
                conn = None
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def summary(self):
        bodies = self.bodies if len(self.bodies) <= 4 else f"{len(self.bodies)} distinct"
        return (f"{self.ok} ok, {len(self.failures)} failed, {self.stale} keep-alive retries; "
                f"bodies {bodies}; failures: {self.failures[:10]}")


def _closed_by_peer(conn):
    """True when the server already closed this idle connection (EOF or RST waiting)."""
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
        if not readable:
            return False
        return conn.sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def wait_for(predicate, timeout=30, interval=0.02, what="condition"):
    """conftest.wait_until, with this module's names for its arguments."""
    return wait_until(predicate, timeout=timeout, interval=interval, message=what)


def more_traffic(load, n, what="traffic"):
    """Waits until `load` has answered `n` more requests: the load ran, counted, for a while
    (instead of a fixed sleep)."""
    target = load.ok + n
    wait_for(lambda: load.ok >= target, timeout=30, what=lambda: f"{n} more requests of {what}: {load.summary()}")


def get(port, path="/"):
    return request(port, path=path)


def body_of(port, path="/"):
    try:
        r = request(port, path=path)
        return r.body if r.status == 200 else None
    except (OSError, EOFError):
        return None


def log_offset(s):
    return len(s.read_log())


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()



def srv_status(s, *extra):
    return subprocess.run([SRV, "status", "--status-file", s.status_path, *extra],
                          capture_output=True, text=True, timeout=10)


def wait_workers(s, n, timeout=30):
    return wait_for(lambda: len(s.worker_pids()) == n and s.worker_pids(), timeout=timeout,
                    what=f"{n} worker(s) (have {s.worker_pids()})")


def copy_in_place(src, dst):
    """Overwrites dst's bytes in place (not an atomic rename): srv must snapshot it."""
    shutil.copyfile(src, dst)


@pytest.fixture
def app_path(tmp_path):
    """A plugin path the test swaps builds under; starts as conformance 1.0.0."""
    path = tmp_path / "libapp.so"
    shutil.copyfile(plugin("conformance"), path)
    return str(path)


def versions(body):
    return body in (V1, V2)


# ---------------------------------------------------------------------------------------
# 1. HUP under load
# ---------------------------------------------------------------------------------------

def test_hup_reloads_under_load_alternating_builds(serve, app_path):
    s = serve(["--app", app_path, "--graceful-timeout", "10"], workers=2)
    master = s.proc.pid
    latencies = []
    builds = [("conformance2", V2), ("conformance", V1)]
    with Load(s.port, conns=48, fresh=4, expect=versions) as load:
        more_traffic(load, 50, "the load before the first HUP")
        for i in range(20):
            name, want = builds[i % 2]
            copy_in_place(plugin(name), app_path)
            since = log_offset(s)
            t0 = time.monotonic()
            s.signal(signal.SIGHUP)
            wait_for(lambda: body_of(s.port) == want, timeout=30, interval=0.01,
                     what=f"reload {i + 1} to answer {want!r}")
            latencies.append(time.monotonic() - t0)
            # The next HUP once this generation is promoted (a sequence of reloads).
            s.wait_log(rf"generation {i + 2} ready", since=since, timeout=30)
        more_traffic(load, 100, "the load after the last reload")
    problems = []
    if s.proc.poll() is not None:
        problems.append(f"the master exited with {s.proc.returncode}")
    if load.failures:
        problems.append(f"failed requests: {load.summary()}")
    if load.ok < 500 or not load.bodies.get(V1) or not load.bodies.get(V2):
        problems.append(f"too little traffic or a build never answered: {load.summary()}")
    # A reload starts the new generation beside the old one at once: its answer comes in
    # the time a worker takes to boot, not after the old generation's --graceful-timeout
    # (10 s). 5 s leaves a loaded machine room and still tells them apart.
    slow = [f"reload {i + 1}: {t:.3f} s" for i, t in enumerate(latencies) if t > 5.0]
    if slow:
        problems.append(f"the new build answered later than 5 s after HUP: {slow}")
    log = s.read_log()
    for bad in ("reload failed", "died with"):
        if bad in log:
            problems.append(f"the log says {bad!r}: {[l for l in log.splitlines() if bad in l][:3]}")
    assert not problems, "\n".join(problems) + f"\nreload latencies: {[round(t, 3) for t in latencies]}"
    # The old generations are all gone: 2 workers of the last generation remain.
    wait_workers(s, 2)
    assert body_of(s.port) == V1


def test_hup_while_the_previous_reload_is_booting(serve, app_path):
    """A second HUP before the first generation is ready replaces the booting one; the
    serving generation is never touched, and requests never fail."""
    s = serve(["--app", app_path, "--threads", "4"], workers=3)
    with Load(s.port, conns=16, fresh=0, path="/sleep?ms=30", expect=lambda b: b == b"slept 30\n",
              pause=0) as load:
        more_traffic(load, 20, "the load before the first HUP")
        for i in range(6):
            since = log_offset(s)
            s.signal(signal.SIGHUP)
            time.sleep(0.004 + 0.004 * (i % 3))  # the second HUP while the first reload boots
            s.signal(signal.SIGHUP)
            s.wait_log(r"generation \d+ ready \(", since=since, timeout=30)
            more_traffic(load, 20, f"the load after reload {i + 1}")
    assert s.proc.poll() is None
    assert load.failures == [], load.summary()
    assert "died with" not in s.read_log(), s.read_log()
    wait_workers(s, 3)


# ---------------------------------------------------------------------------------------
# 2. HUP with broken builds
# ---------------------------------------------------------------------------------------

BROKEN = [
    # (plugin, what the "reload failed" line must name)
    ("badmagic", r"magic"),
    ("undefined", r"undefined symbol"),
    ("abimajor", r"ABI"),
    ("loadfail", r"cannot open database"),
    ("loadcrash", r"SIGSEGV"),
    ("ctorcrash", r"SIGABRT|abort"),
    ("notelf", r"ELF"),
    ("loadhang", r"boot-timeout|ready within"),
]


def test_hup_with_broken_builds_keeps_the_old_one_serving(serve, app_path):
    s = serve(["--app", app_path, "--boot-timeout", "2", "--graceful-timeout", "5"], workers=2)
    problems = []
    with Load(s.port, conns=8, fresh=2, expect=lambda b: b == V1) as load:
        for name, cause in BROKEN:
            copy_in_place(plugin(name), app_path)
            since = log_offset(s)
            s.signal(signal.SIGHUP)
            try:
                m = s.wait_log(r"reload failed[^\n]*", since=since, timeout=30)
            except AssertionError:
                problems.append(f"{name}: no 'reload failed' line; log since HUP: "
                                f"{s.read_log()[since:]!r}")
                continue
            line = m.group(0)
            if not re.search(cause, line, re.I):
                problems.append(f"{name}: the 'reload failed' line does not name {cause!r}: {line!r}")
            if body_of(s.port) != V1:
                problems.append(f"{name}: the old build stopped answering")
        # A good build after all that reloads again.
        load.expect = versions
        copy_in_place(plugin("conformance2"), app_path)
        s.signal(signal.SIGHUP)
        wait_for(lambda: body_of(s.port) == V2, timeout=30, what="the good build after the broken ones")
        more_traffic(load, 20, "the load after the good build")
    assert s.proc.poll() is None
    assert not problems, "\n".join(problems)
    assert load.failures == [], load.summary()
    wait_workers(s, 2)


# ---------------------------------------------------------------------------------------
# 3. A route that segfaults
# ---------------------------------------------------------------------------------------

def _conn_to_worker(port, pid, tries=200):
    """A keep-alive connection that a given worker accepted (found through /counter)."""
    for _ in range(tries):
        c = Conn(port)
        c.send("GET /counter HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        if r.body.startswith(f"pid {pid} ".encode()):
            return c
        c.close()
    raise AssertionError(f"no connection reached worker {pid}")


def test_segfaulting_route_kills_only_its_worker_which_is_replaced(serve):
    s = serve(["--app", plugin("conformance")], workers=2)
    a, b = s.worker_pids()
    victim = _conn_to_worker(s.port, b)
    others = [_conn_to_worker(s.port, a) for _ in range(3)]
    # Requests in flight on the other worker while the crash happens.
    results = []

    def slow(c):
        try:
            c.send("GET /sleep?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.read_response()
            results.append((r.status, r.body))
        except Exception as e:  # noqa: BLE001
            results.append(("error", repr(e)))

    threads = [threading.Thread(target=slow, args=(c,)) for c in others]
    for t in threads:
        t.start()
    wait_for(lambda: any(w["pid"] == a and (w.get("currentRequest") or "").startswith("GET /sleep")
                         for w in (read_status(s) or {}).get("workers", [])),
             what=f"worker {a} to be in a /sleep request")
    since = log_offset(s)
    victim.send("GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
    t0 = time.monotonic()
    with pytest.raises((EOFError, ConnectionResetError)):
        r = victim.read_response()
        pytest.fail(f"/crash answered {r!r}")
    new = wait_for(lambda: (set(s.worker_pids()) - {a, b}) if b not in s.worker_pids() and
                   len(s.worker_pids()) == 2 else None, timeout=30, interval=0.005,
                   what="the crashed worker to be replaced")
    replaced_in = time.monotonic() - t0
    m = s.wait_log(rf"worker {b} died with signal SIGSEGV[^\n]*", since=since, timeout=30)
    for t in threads:
        t.join(timeout=10)
    assert '"GET /crash' in m.group(0), m.group(0)
    assert "replacing it" in m.group(0), m.group(0)
    assert a in s.worker_pids() and len(new) == 1
    # At once, not after a boot-failure backoff (0.1 s doubling to 10 s) or a timeout; the
    # log line above says "replacing it". 5 s leaves a loaded machine room.
    assert replaced_in < 5.0, f"the worker was replaced after {replaced_in:.3f} s"
    assert results == [(200, b"slept 800\n")] * 3, f"requests on the other worker: {results}"
    # The other worker's connections are still usable.
    for c in others:
        c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().body == V1
        c.close()
    # New connections work, and the replacement takes its share.
    assert all(body_of(s.port) == V1 for _ in range(20))
    new_pid = new.pop()
    wait_for(lambda: any(_counter_pid(s.port) == new_pid for _ in range(20)), timeout=30,
             what="the replacement worker to serve")


def _counter_pid(port):
    body = body_of(port, "/counter") or b""
    m = re.match(rb"pid (\d+) count", body)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------
# 4. A route that hangs
# ---------------------------------------------------------------------------------------

def test_hanging_request_is_killed_after_timeout(serve):
    s = serve(["--app", plugin("conformance"), "--timeout", "2"], workers=1)
    (pid,) = s.worker_pids()
    since = log_offset(s)
    c = Conn(s.port, timeout=20)
    t0 = time.monotonic()
    c.send("GET /sleep?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises((EOFError, ConnectionResetError)):
        r = c.read_response()
        pytest.fail(f"the hanging request answered {r!r}")
    took = time.monotonic() - t0
    c.close()
    m = s.wait_log(rf"worker {pid} timed out after[^\n]*", since=since, timeout=30)
    assert '"GET /sleep' in m.group(0) and re.search(r"\(request [0-9a-f]{12}-\d+\)", m.group(0)), m.group(0)
    assert 1.9 <= took <= 8, f"the stuck worker was killed after {took:.1f} s (--timeout 2)"
    new = wait_for(lambda: [p for p in s.worker_pids() if p != pid], timeout=30, what="a new worker")
    assert pid not in s.worker_pids()
    wait_for(lambda: body_of(s.port) == V1, timeout=30, what="the replacement to serve")
    assert _counter_pid(s.port) == new[0]


# ---------------------------------------------------------------------------------------
# 5. TERM with a request in flight
# ---------------------------------------------------------------------------------------

def test_term_lets_in_flight_request_finish_then_exits_zero(serve):
    s = serve(["--app", plugin("conformance"), "--graceful-timeout", "10"], workers=2)
    result = {}

    def slow():
        try:
            c = Conn(s.port, timeout=15)
            c.send("GET /sleep?ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.read_response()
            result["response"] = (r.status, r.body)
            result["at"] = time.monotonic()
        except Exception as e:  # noqa: BLE001
            result["error"] = repr(e)

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: any((w.get("currentRequest") or "").startswith("GET /sleep")
                         for w in (read_status(s) or {}).get("workers", [])),
             timeout=30, what="the status to show the request in flight")
    workers = s.worker_pids()
    t_term = time.monotonic()
    s.signal(signal.SIGTERM)
    rc = s.proc.wait(timeout=15)
    exited = time.monotonic()
    # The master exited after its workers (so after the one that answered the request),
    # a state rather than the order of two clocks read by two threads.
    running = [w for w in workers if pid_alive(w)]
    t.join(timeout=10)
    assert "error" not in result, f"{result}\n{s.read_log()}"
    assert result["response"][0] == 200, result
    assert rc == 0, s.read_log()
    assert not running, f"workers {running} still ran when the master had exited"
    assert exited - t_term < 8, f"the master took {exited - t_term:.1f} s to stop"
    assert "shutting down" in s.read_log()


def test_term_right_after_a_client_hung_up_stops_promptly(serve):
    """A connection that opened and closed just before TERM must not hold the worker (and
    so the master) until --graceful-timeout: nothing is in flight."""
    # A graceful timeout of 20 s and a bound of 10 s: a master that waited for the timeout
    # fails, and a loaded machine has seconds to spare (it once was 3 s and 1.5 s).
    for attempt in range(12):
        s = serve(["--app", plugin("conformance"), "--graceful-timeout", "20"], workers=1, wait=False)
        s.wait_log(r"generation 1 ready")
        socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
        t0 = time.monotonic()
        s.signal(signal.SIGTERM)
        assert s.proc.wait(timeout=60) == 0, s.read_log()
        took = time.monotonic() - t0
        assert took < 10, (f"attempt {attempt + 1}: the master took {took:.1f} s to stop an idle server "
                           f"(--graceful-timeout 20):\n{s.read_log()}")
        s.stop()


def test_pid_file_written_and_removed_on_exit(serve):
    s = serve(["--app", plugin("conformance"), "--graceful-timeout", "5"], workers=1)
    assert read_pid(s.pid_path) == s.proc.pid
    s.signal(signal.SIGTERM)
    assert s.proc.wait(timeout=15) == 0
    assert not os.path.exists(s.pid_path), f"the pid file was left behind: {open(s.pid_path).read()!r}"
    assert not os.path.exists(s.status_path), "the status file was left behind"


# ---------------------------------------------------------------------------------------
# 6. USR2: a new master on the same listeners
# ---------------------------------------------------------------------------------------

def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def test_usr1_reopens_log_files_after_rotation(serve, tmp_path):
    """logrotate's way: move the files away, USR1, and srv writes to new files."""
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    s = serve(["--app", plugin("conformance"), "--access-logfile", str(access), "--error-logfile", str(errors)],
              workers=2, wait=False)
    deadline = time.monotonic() + 30
    while not (errors.exists() and b"generation 1 ready" in errors.read_bytes()):
        assert time.monotonic() < deadline and s.proc.poll() is None, s.read_log()
        time.sleep(0.05)
    assert request(s.port, path="/before").status == 404
    deadline = time.monotonic() + 30
    while b"/before" not in access.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.rename(access, tmp_path / "access.log.1")
    os.rename(errors, tmp_path / "error.log.1")
    s.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Both workers must have reopened: every request lands in the new file.
        for _ in range(4):
            request(s.port, path="/after")
        if access.exists() and access.read_bytes().count(b"/after") >= 4 \
                and b"/after" not in (tmp_path / "access.log.1").read_bytes():
            break
        time.sleep(0.1)
    assert b"/before" in (tmp_path / "access.log.1").read_bytes()
    assert access.exists() and b"GET /after HTTP/1.1\" 404" in access.read_bytes(), access.read_bytes()
    assert b"USR1: reopening log files" in (tmp_path / "error.log.1").read_bytes()
    assert errors.exists(), "the error log was not reopened"


def test_usr2_new_master_takes_over_under_load(serve):
    s = serve(["--app", plugin("conformance"), "--graceful-timeout", "10"], workers=2)
    old = s.proc.pid
    assert read_pid(s.pid_path) == old
    new = None
    try:
        with Load(s.port, conns=16, fresh=2, expect=lambda b: b == V1) as load:
            more_traffic(load, 50, "the load before USR2")
            s.signal(signal.SIGUSR2)
            new = wait_for(lambda: (read_pid(s.pid_path) or old) != old and read_pid(s.pid_path),
                           timeout=30, what="a new pid in the pid file")
            rc = s.proc.wait(timeout=60)
            more_traffic(load, 100, "the load after the old master exited")
        assert rc == 0, s.read_log()
        assert new != old and pid_alive(new), s.read_log()
        assert load.failures == [], load.summary()
        assert load.ok > 100, load.summary()
        assert body_of(s.port) == V1
        # The new master runs the show: its workers serve, the status is its own.
        workers = subprocess.run(["pgrep", "-P", str(new)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        status = wait_for(lambda: (read_status(s) or {}).get("masterPID") == new and read_status(s),
                          timeout=30, what="the new master's status file")
        assert len(status["workers"]) == 2
    finally:
        for pid in (new, old):
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGINT)
        if new:
            wait_for(lambda: not pid_alive(new), timeout=30, what="the new master to stop")
        try:
            os.killpg(old, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------
# 7. TTIN / TTOU
# ---------------------------------------------------------------------------------------

def test_ttin_ttou_change_the_worker_count(serve):
    s = serve(["--app", plugin("conformance")], workers=2)
    wait_workers(s, 2)
    s.signal(signal.SIGTTIN)
    wait_workers(s, 3)
    s.signal(signal.SIGTTIN)
    wait_workers(s, 4)
    s.signal(signal.SIGTTOU)
    wait_workers(s, 3)
    s.signal(signal.SIGTTOU)  # one at a time: the kernel merges identical pending signals
    wait_workers(s, 2)
    s.signal(signal.SIGTTOU)
    wait_workers(s, 1)
    # Never below one worker: the master logs the new target, 1 again.
    since = log_offset(s)
    s.signal(signal.SIGTTOU)
    s.wait_log(r"TTOU: 1 worker\(s\)", since=since)
    # A negative check, so a window: the master stops workers over a target on its next
    # turns (it rewrites the status file twice a second); 1 s would see it start to.
    time.sleep(1.0)
    assert len(s.worker_pids()) == 1
    assert body_of(s.port) == V1
    log = s.read_log()
    assert "TTIN: 3 worker(s)" in log and "TTOU: 1 worker(s)" in log, log


# ---------------------------------------------------------------------------------------
# 8. --max-requests
# ---------------------------------------------------------------------------------------

def test_max_requests_recycles_workers_without_failures(serve):
    s = serve(["--app", plugin("conformance"), "--max-requests", "50"], workers=1)
    (first,) = s.worker_pids()
    counts_seen = []
    with Load(s.port, conns=4, fresh=1, path="/counter",
              expect=lambda b: re.fullmatch(rb"pid \d+ count \d+\n", b) is not None, pause=0.002) as load:
        deadline = time.monotonic() + 30
        while load.ok < 400 and time.monotonic() < deadline:
            counts_seen.append(len(s.worker_pids()))
            time.sleep(0.05)
    pids = {int(re.match(rb"pid (\d+)", b).group(1)) for b in load.bodies}
    assert load.failures == [], load.summary()
    assert load.ok >= 400, load.summary()
    assert first not in s.worker_pids()
    assert "(max-requests)" in s.read_log()
    # One worker (-w 1); while a replacement boots, the retiring one serves on: never more than 2.
    assert max(counts_seen) <= 2, f"with -w 1 the master ran up to {max(counts_seen)} workers: {counts_seen}"
    assert len(pids) >= 4, f"{len(pids)} worker(s) served {load.ok} requests: {sorted(pids)}"
    # The last retiring worker may still be finishing: -w 1 is the state it ends in.
    wait_workers(s, 1, timeout=30)


# ---------------------------------------------------------------------------------------
# 9. srv status
# ---------------------------------------------------------------------------------------

def test_status_shows_generation_hash_and_workers(serve, app_path):
    s = serve(["--app", app_path], workers=2)
    pids = s.worker_pids()
    h1 = sha256(plugin("conformance"))
    wait_for(lambda: len((read_status(s) or {}).get("workers", [])) == 2, what="the status file")
    out = srv_status(s)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"^generation 1\b", text, re.M), text
    assert h1[:12] in text, text
    for pid in pids:
        assert re.search(rf"^\s+{pid}\s+1\s+serving\b", text, re.M), text
    printed = srv_status(s, "--json").stdout
    assert "\\/" not in printed, f"paths are printed with plain slashes: {printed[:300]}"
    raw = json.loads(printed)
    assert raw["generation"] == 1
    assert raw["apps"][0]["hash"] == h1
    assert sorted(w["pid"] for w in raw["workers"]) == pids

    copy_in_place(plugin("conformance2"), app_path)
    s.signal(signal.SIGHUP)
    wait_for(lambda: body_of(s.port) == V2, what="the new build")
    h2 = sha256(plugin("conformance2"))
    raw = wait_for(lambda: (lambda st: st if st and st["generation"] == 2 and len(st["workers"]) == 2
                            and all(w["generation"] == 2 for w in st["workers"]) else None)(read_status(s)),
                   timeout=30, what="generation 2 alone in the status")
    assert raw["apps"][0]["hash"] == h2
    text = srv_status(s).stdout
    assert re.search(r"^generation 2\b", text, re.M), text
    assert h2[:12] in text and h1[:12] not in text, text
    for pid in s.worker_pids():
        assert re.search(rf"^\s+{pid}\s+2\s+serving\b", text, re.M), text


# ---------------------------------------------------------------------------------------
# 10. Configuration: file, SRV_CMD_ARGS, flags, HUP, --check-config
# ---------------------------------------------------------------------------------------

def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_config_file_workers_and_hup_rereads_it(serve, tmp_path):
    cfg = tmp_path / "srv.conf"
    _write(cfg, f"# srv settings\napp = {plugin('conformance')}\nworkers = 2\ntimeout = 5\n")
    s = serve(["-c", str(cfg)], workers=None)
    wait_workers(s, 2)
    assert body_of(s.port) == V1

    _write(cfg, f"app = {plugin('conformance')}\nworkers = 3\n")
    since = log_offset(s)
    s.signal(signal.SIGHUP)
    s.wait_log(r"generation 2 ready", since=since)
    wait_workers(s, 3)

    # An invalid file on HUP: the running settings stay, the log says why.
    _write(cfg, f"app = {plugin('conformance')}\nworkers = abc\n")
    since = log_offset(s)
    s.signal(signal.SIGHUP)
    m = s.wait_log(r"configuration is invalid[^\n]*", since=since)
    assert "workers" in m.group(0) or "abc" in m.group(0), m.group(0)
    # The invalid file stops the reload where it logs this line: nothing comes after it.
    assert s.proc.poll() is None
    assert len(s.worker_pids()) == 3
    assert body_of(s.port) == V1
    _write(cfg, f"app = {plugin('conformance')}\nfrobnicate = 1\n")
    since = log_offset(s)
    s.signal(signal.SIGHUP)
    m = s.wait_log(r"configuration is invalid[^\n]*", since=since)
    assert "frobnicate" in m.group(0), m.group(0)
    assert len(s.worker_pids()) == 3 and body_of(s.port) == V1
    assert s.proc.poll() is None


def test_srv_cmd_args_sets_workers(serve):
    s = serve(["--app", plugin("conformance")], workers=None, env={"SRV_CMD_ARGS": "--workers 2"})
    # The master's ready line names its target: 2, not more on a second look.
    s.wait_log(r"generation 1 ready: 2 worker\(s\)")
    wait_workers(s, 2)


def test_flag_overrides_config_file(serve, tmp_path):
    cfg = tmp_path / "srv.conf"
    _write(cfg, f"app = {plugin('conformance')}\nworkers = 3\n")
    s = serve(["-c", str(cfg)], workers=1)
    # The master's ready line names its target: 1, not the file's 3.
    s.wait_log(r"generation 1 ready: 1 worker\(s\)")
    assert len(s.worker_pids()) == 1


def _check_config(args, env=None):
    full = dict(os.environ)
    full.pop("SRV_CMD_ARGS", None)
    full.update(env or {})
    return subprocess.run([SRV, *args, "--check-config"], capture_output=True, text=True, timeout=20, env=full)


def test_check_config(tmp_path):
    good = tmp_path / "good.conf"
    _write(good, f"app = {plugin('conformance')}\nworkers = 3\nbind = 127.0.0.1:{free_port()}\n"
                 "graceful_timeout = 4\n")
    r = _check_config(["-c", str(good)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 worker(s)" in r.stdout, r.stdout

    # Precedence: flags > SRV_CMD_ARGS > file.
    r = _check_config(["-c", str(good)], env={"SRV_CMD_ARGS": "--workers 2"})
    assert r.returncode == 0 and "2 worker(s)" in r.stdout, r.stdout + r.stderr
    r = _check_config(["-c", str(good), "-w", "5"], env={"SRV_CMD_ARGS": "--workers 2"})
    assert r.returncode == 0 and "5 worker(s)" in r.stdout, r.stdout + r.stderr
    r = _check_config([], env={"SRV_CMD_ARGS": f"-c {good}"})
    assert r.returncode == 0 and "3 worker(s)" in r.stdout, r.stdout + r.stderr

    cases = [
        ("workers = abc\n", r"workers|abc"),
        ("frobnicate = 1\n", r"unknown setting \"frobnicate\""),
        ("wokers = 2\n", r"line 2: unknown setting \"wokers\" \(did you mean workers\?\)"),
        ("workers 2\n", r"line 2: expected `name = value`"),
        ("workers = 0\n", r"workers"),
        ("timeout = -1\n", r"timeout"),
    ]
    problems = []
    for text, message in cases:
        bad = tmp_path / "bad.conf"
        _write(bad, f"app = {plugin('conformance')}\n{text}")
        r = _check_config(["-c", str(bad)])
        out = r.stdout + r.stderr
        if r.returncode != 64 or not re.search(message, out) or "Usage:" in out:
            # exit 64 (bad input), the file and line, and no usage: the command line was right.
            problems.append(f"{text.strip()!r}: exit {r.returncode}, output {out.strip()!r}")
    r = _check_config(["-c", str(tmp_path / "missing.conf")])
    if r.returncode == 0 or "missing.conf" not in r.stdout + r.stderr:
        problems.append(f"missing file: exit {r.returncode}, output {(r.stdout + r.stderr).strip()!r}")
    r = _check_config(["--app", plugin("conformance")], env={"SRV_CMD_ARGS": "--workers abc"})
    if r.returncode == 0 or "SRV_CMD_ARGS" not in r.stdout + r.stderr:
        problems.append(f"SRV_CMD_ARGS=--workers abc: exit {r.returncode}, output {(r.stdout + r.stderr).strip()!r}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------
# Deploying a new srv executable under a running master
# ---------------------------------------------------------------------------------------

def test_master_keeps_working_after_its_executable_is_replaced(serve, tmp_path):
    """Deploying a new srv binary over the running one (a rename over the path, as package
    managers do) must not stop the running master from starting workers: a crashed worker
    is replaced and HUP reloads, as before."""
    exe = str(tmp_path / "bin" / "srv")
    os.makedirs(os.path.dirname(exe))
    shutil.copyfile(SRV, exe)
    os.chmod(exe, 0o755)
    run_copy = [sys.executable, "-c", "import os, sys; os.execv(sys.argv[1], sys.argv[1:2] + sys.argv[3:])", exe]
    s = serve(["--app", plugin("conformance")], workers=2, wrapper=run_copy)
    assert os.readlink(f"/proc/{s.proc.pid}/exe") == exe
    # The deploy: a new file renamed over the old one.
    shutil.copyfile(SRV, exe + ".new")
    os.chmod(exe + ".new", 0o755)
    os.replace(exe + ".new", exe)

    (a, b) = s.worker_pids()
    since = log_offset(s)
    c = _conn_to_worker(s.port, b)
    c.send("GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises((EOFError, ConnectionResetError)):
        c.read_response()
    c.close()
    problems = []
    try:
        # A replacement is a worker that answers (a spawn that failed is no replacement).
        wait_for(lambda: _counter_pid(s.port) not in (a, b, None), timeout=30, interval=0.01,
                 what="a replacement for the crashed worker to answer")
    except AssertionError as e:
        problems.append(f"{e}; workers {s.worker_pids()}")
    s.signal(signal.SIGHUP)
    try:
        s.wait_log(r"generation 2 ready", since=since, timeout=30)
    except AssertionError:
        problems.append("HUP did not bring up generation 2")
    log = s.read_log()[since:].splitlines()
    assert not problems, "\n".join(problems) + f"\nlog since the deploy ({len(log)} lines):\n" + "\n".join(log[:6])
    assert body_of(s.port) == V1


# ---------------------------------------------------------------------------------------
# 11. Starting with a broken plugin
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cause", BROKEN)
def test_start_with_broken_plugin_exits_nonzero_with_reason(name, cause, tmp_path):
    cmd = [SRV, "--app", plugin(name), "-b", f"127.0.0.1:{free_port()}", "-w", "2",
           "--runtime-dir", str(tmp_path / "run"), "--pid", str(tmp_path / "pid"),
           "--boot-timeout", "2"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert re.search(cause, out, re.I), f"the output does not name {cause!r}:\n{out}"
    assert time.monotonic() - t0 < 10, f"srv took {time.monotonic() - t0:.1f} s to give up:\n{out}"


# ---------------------------------------------------------------------------------------
# 12. systemd: sd_notify and socket activation
# ---------------------------------------------------------------------------------------

def _recv_notifications(sock, until, timeout=30):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"never received {until!r}; got {got}")


def test_systemd_notify(serve, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        s = serve(["--app", plugin("conformance")], workers=1, env={"NOTIFY_SOCKET": path})
        got = _recv_notifications(sock, "READY=1")
        assert f"MAINPID={s.proc.pid}" in got[-1], got
        s.signal(signal.SIGHUP)
        got = _recv_notifications(sock, "READY=1")
        assert any("RELOADING=1" in g for g in got), got
        s.signal(signal.SIGTERM)
        _recv_notifications(sock, "STOPPING=1")
        assert s.proc.wait(timeout=15) == 0
    finally:
        sock.close()


def test_systemd_socket_activation(serve):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    other = free_port()  # -b names this port; srv must not bind it when given a socket
    # systemd's contract: the socket at fd 3, LISTEN_FDS=1, LISTEN_PID = srv's own pid, which
    # only a process that then execs srv can know.
    wrapper = [sys.executable, "-c",
               "import os, sys; fd = int(sys.argv[1]); fd != 3 and (os.dup2(fd, 3), os.close(fd)); "
               "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
               "os.execv(sys.argv[2], sys.argv[2:])", str(fd)]
    try:
        s = serve(["--app", plugin("conformance")], workers=2, bind=f"127.0.0.1:{other}", port=port,
                  wrapper=wrapper, popen_kw={"pass_fds": (fd,)})
    finally:
        listener.close()  # srv holds its own copy now
    assert "from systemd (LISTEN_FDS)" in s.read_log(), s.read_log()
    for _ in range(10):
        assert get(port).body == V1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", other), timeout=2).close()
    # The activated socket survives a reload.
    s.signal(signal.SIGHUP)
    s.wait_log(r"generation 2 ready")
    wait_workers(s, 2)
    assert get(port).body == V1
    # Workers must not see the systemd variables (they would think the socket is theirs).
    for pid in s.worker_pids():
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        assert not any(e.startswith((b"LISTEN_PID=", b"LISTEN_FDS=")) for e in env)
