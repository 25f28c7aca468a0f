"""The master's promises under load and at its edges (issue 15): a reload completes or
rolls back, never stays half done; TTIN during a reload reaches the new generation;
--timeout holds with --threads; --send-timeout frees a thread; a fast stop and a master
killed with SIGKILL leave no worker behind; a HUP storm with broken builds loses nothing.

The conformance app's load gate (SRV_CONFORMANCE_LOAD_GATE) holds every loading worker
but the first while a file exists, so a reload stays half booted for as long as a test
needs, without timing."""
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import SRV, Server, free_port, plugin
from test_master import (V1, V2, Load, app_path, body_of, copy_in_place, log_offset, pid_alive, read_status,  # noqa: F401
                         versions, wait_for, wait_workers)


def gen_workers(s, generation):
    st = read_status(s)
    return [w for w in st["workers"] if w["generation"] == generation and w["state"] in ("serving", "booting")]


def settled(s, workers):
    """No reload in progress, and exactly `workers` workers, all of the serving generation."""
    st = read_status(s)
    ws = st["workers"]
    return (st.get("pendingGeneration") is None and len(ws) == workers
            and all(w["generation"] == st["generation"] and w["state"] == "serving" for w in ws)
            and len(s.worker_pids()) == workers)


def gated(tmp_path):
    gate = str(tmp_path / "gate")
    return gate, {"SRV_CONFORMANCE_LOAD_GATE": gate}


def close_gate(gate):
    """The next reload's first worker passes, the others wait until open_gate."""
    if os.path.exists(gate + ".first"):
        os.unlink(gate + ".first")
    open(gate, "w").close()


def open_gate(gate):
    os.unlink(gate)


def test_a_pending_worker_that_crashes_during_the_switch_is_replaced_and_the_reload_completes(serve, app_path, tmp_path):
    """A worker of the booting generation that dies after READY (a request crashed it) is
    replaced within that generation, which is then promoted: old and new builds never
    serve side by side past the reload."""
    gate, env = gated(tmp_path)
    s = serve(["--app", app_path, "--boot-timeout", "60"], workers=2, env=env)
    close_gate(gate)
    copy_in_place(plugin("conformance2"), app_path)
    s.signal(signal.SIGHUP)
    wait_for(lambda: len(gen_workers(s, 2)) == 2 and any(w["state"] == "serving" for w in gen_workers(s, 2)),
             timeout=20, what="generation 2 with one ready worker and one held at the gate")
    ready = [w["pid"] for w in gen_workers(s, 2) if w["state"] == "serving"][0]
    # Crash requests until one lands on the ready worker of generation 2.
    deadline = time.time() + 30
    while pid_alive(ready) and time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", s.port), timeout=2).sendall(b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass
        time.sleep(0.05)
    assert not pid_alive(ready), "no crash request reached the new generation's ready worker"
    open_gate(gate)
    wait_for(lambda: settled(s, 2) and read_status(s)["generation"] == 2, timeout=30,
             what=f"generation 2 promoted with 2 workers (status: {read_status(s)})")
    assert body_of(s.port) == V2
    assert s.proc.poll() is None


def test_ttin_during_a_reload_applies_to_the_new_generation(serve, app_path, tmp_path):
    gate, env = gated(tmp_path)
    s = serve(["--app", app_path, "--boot-timeout", "60"], workers=2, env=env)
    close_gate(gate)
    s.signal(signal.SIGHUP)
    wait_for(lambda: len(gen_workers(s, 2)) == 2, timeout=20, what="generation 2 booting")
    s.signal(signal.SIGTTIN)
    s.wait_log(r"TTIN: 3 worker\(s\)")
    open_gate(gate)
    wait_for(lambda: settled(s, 3) and read_status(s)["generation"] == 2, timeout=30,
             what=f"generation 2 serving with 3 workers (status: {read_status(s)})")


def test_threads_timeout_kills_a_slow_request_while_others_run(serve):
    """--threads 4 --timeout 2: a 10 s request is killed at about 2 s although other
    requests keep the worker busy, and the log names it."""
    s = serve(["--app", plugin("conformance"), "--threads", "4", "--timeout", "2"], workers=1)
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                body_of(s.port, "/sleep?ms=200")
            except Exception:
                time.sleep(0.05)

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        c.sendall(b"GET /sleep?ms=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        took = time.monotonic() - t0
    finally:
        stop.set()
    assert not data.startswith(b"HTTP/1.1 200"), "the 10 s request was served past --timeout 2"
    assert took < 8, f"the request lived {took:.1f} s with --timeout 2"
    s.wait_log(r"timed out after [\d.]+ s serving \"GET /sleep\?ms=10000\"")
    wait_workers(s, 1, timeout=20)


def test_send_timeout_drops_a_client_that_stops_reading_and_its_thread_comes_back(serve):
    s = serve(["--app", plugin("conformance"), "--threads", "1", "--send-timeout", "2", "--timeout", "120"], workers=1)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", s.port))
    stuck.sendall(b"GET /write-big?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n")
    # The only thread writes to a client that never reads; after --send-timeout it is
    # dropped and the thread serves again.
    time.sleep(0.5)
    t0 = time.monotonic()
    assert body_of(s.port) == V1
    took = time.monotonic() - t0
    assert took < 30, f"the next request waited {took:.1f} s"
    s.wait_log(r"--send-timeout")
    stuck.close()


def test_kill_9_of_the_master_while_a_request_hangs_leaves_no_worker_and_frees_the_port(serve):
    s = serve(["--app", plugin("conformance"), "--timeout", "60"], workers=2)
    workers = s.worker_pids()
    assert len(workers) == 2
    hung = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    hung.sendall(b"GET /sleep?ms=30000 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait()
    # "No worker is left 1 s later": the kernel's parent-death signal is immediate; 3 s
    # leave room for a loaded machine.
    wait_for(lambda: not any(pid_alive(p) for p in workers), timeout=3,
             what=f"the workers {workers} gone after the master's SIGKILL")
    again = Server(["--app", plugin("conformance")], workers=1, port=s.port)
    try:
        assert body_of(again.port) == V1
    finally:
        again.stop()
    hung.close()


def test_a_fast_stop_while_a_request_hangs_ends_within_its_deadline(serve):
    s = serve(["--app", plugin("conformance"), "--timeout", "120", "--graceful-timeout", "60"], workers=2)
    workers = s.worker_pids()
    hung = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    hung.sendall(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    s.signal(signal.SIGINT)
    s.proc.wait(timeout=15)
    assert s.proc.returncode == 0
    assert not any(pid_alive(p) for p in workers)
    hung.close()


def test_term_during_a_reload_stops_everything_and_finishes_in_flight_requests(serve, app_path, tmp_path):
    gate, env = gated(tmp_path)
    s = serve(["--app", app_path, "--boot-timeout", "60"], workers=2, env=env)
    close_gate(gate)
    s.signal(signal.SIGHUP)
    wait_for(lambda: len(gen_workers(s, 2)) == 2, timeout=20, what="generation 2 booting")
    result = {}

    def slow():
        try:
            result["body"] = body_of(s.port, "/sleep?ms=1500")
        except Exception as e:  # noqa: BLE001
            result["error"] = repr(e)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    all_workers = s.worker_pids()
    s.signal(signal.SIGTERM)
    s.proc.wait(timeout=30)
    t.join(10)
    assert s.proc.returncode == 0
    assert "error" not in result, result
    assert not any(pid_alive(p) for p in all_workers), "a worker outlived the master"
    open_gate(gate)


def test_hup_and_term_together_end_in_a_clean_stop(serve, app_path):
    s = serve(["--app", app_path], workers=2)
    workers = s.worker_pids()
    with Load(s.port, conns=4, fresh=0, expect=versions) as load:
        time.sleep(0.3)
        s.signal(signal.SIGHUP)
        s.signal(signal.SIGTERM)
        s.proc.wait(timeout=40)
    assert s.proc.returncode == 0
    assert not any(pid_alive(p) for p in workers)
    assert load.ok > 0


def test_usr2_during_a_reload_leaves_one_master_serving_one_generation(serve, app_path, tmp_path):
    gate, env = gated(tmp_path)
    s = serve(["--app", app_path, "--boot-timeout", "60"], workers=2, env=env)
    old = s.proc.pid
    close_gate(gate)
    s.signal(signal.SIGHUP)
    wait_for(lambda: len(gen_workers(s, 2)) == 2, timeout=20, what="generation 2 booting")
    open_gate(gate)  # the new master's workers must be able to boot
    s.signal(signal.SIGUSR2)
    s.proc.wait(timeout=60)
    assert s.proc.returncode == 0
    # The new master wrote the pid file; it serves with 2 workers of one generation.
    new = wait_for(lambda: (lambda p: p if p and p != old and pid_alive(p) else None)(
        int(open(s.pid_path).read().strip() or 0)), timeout=20, what="the new master's pid file")
    try:
        assert body_of(s.port) in (V1, V2)
        children = lambda: subprocess.run(["pgrep", "-P", str(new)], capture_output=True, text=True).stdout.split()
        wait_for(lambda: len(children()) == 2, timeout=20, what="the new master's 2 workers")
    finally:
        os.kill(new, signal.SIGINT)
        wait_for(lambda: not pid_alive(new), timeout=15, what="the new master stopped")


def test_hup_storm_with_broken_builds_loses_no_request(serve, app_path):
    """50 HUPs at random 0-25 ms intervals, the file swapped among good and broken builds,
    under load: 0 failed requests, the master alive, then exactly -w workers of one
    generation and the last good build serving."""
    s = serve(["--app", app_path, "--graceful-timeout", "10", "--boot-timeout", "20"], workers=2)
    builds = [plugin("conformance"), plugin("conformance2"), plugin("loadfail"), plugin("ctorcrash")]
    rng = random.Random(15)
    with Load(s.port, conns=16, fresh=2, expect=versions) as load:
        time.sleep(0.3)
        for _ in range(50):
            copy_in_place(rng.choice(builds), app_path)
            s.signal(signal.SIGHUP)
            time.sleep(rng.uniform(0, 0.025))
        copy_in_place(plugin("conformance2"), app_path)
        s.signal(signal.SIGHUP)
        wait_for(lambda: settled(s, 2) and body_of(s.port) == V2, timeout=60,
                 what=f"one generation of 2 workers serving 2.0.0 (status: {read_status(s)})")
        time.sleep(0.3)
    assert s.proc.poll() is None, "the master died"
    assert not load.failures, load.summary()
    assert load.ok > 100, load.summary()
    st = read_status(s)
    assert [a["version"] for a in st["apps"]] == ["2.0.0"]
