"""Fixtures for srv's integration tests: the real binary, real plugins, real sockets.

SRV_BIN names the srv executable (default: .build/release/srv); PLUGINS the directory the
Makefiles build plugins into (default: build/plugins). `make test` sets both.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked `root` need root; run as an ordinary user they are skipped, saying why."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (privilege drop, ports below 1024): run the suite as root, "
                                   "as CI does; Tests/integration/run.sh runs it as root only for these")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def unprivileged_user():
    """The ordinary user a root test hands srv's workers to (run.sh's test user, or nobody)."""
    return os.environ.get("SRV_TEST_UNPRIVILEGED_USER", "nobody")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SRV = os.environ.get("SRV_BIN", os.path.join(ROOT, ".build", "release", "srv"))
PLUGINS = os.environ.get("PLUGINS", os.path.join(ROOT, "build", "plugins"))


def plugin(name):
    """Path of lib<name>.so in the plugin build directory."""
    path = os.path.join(PLUGINS, f"lib{name}.so")
    assert os.path.exists(path), f"{path} missing: run `make examples test-plugins` first"
    return path


def wait_until(predicate, timeout=30, interval=0.05, message="the condition"):
    """Polls predicate() until it returns something true, and returns that; fails naming
    `message` (a string, or a callable giving one, e.g. the log) after `timeout` seconds.
    Deadlines are generous on purpose: the suite counts and waits for states, it does not
    time, and a loaded 2-core machine may take seconds for what usually takes milliseconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        time.sleep(interval)


def pid_alive(pid):
    """True while process `pid` runs (another user's too); a zombie is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def snapshots_held(pid):
    """The snapshots process `pid` holds open (sealed memory files `srv-<hash>-<file>`):
    {name: the path under /proc that reads its content}."""
    held = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if re.match(r"/memfd:srv-[0-9a-f]{12}-", target):
            held[target[len("/memfd:"):].removesuffix(" (deleted)")] = f"/proc/{pid}/fd/{fd}"
    return held


def answers(port, path="/", body=None):
    """True when a GET of `path` answers 200 (with `body`, when given); False while srv
    cannot be reached: for wait_until."""
    try:
        r = request(port, path=path)
    except OSError:
        return False
    return r.status == 200 and (body is None or r.body == body)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running srv master with its workers, on a free port, logging to a file."""

    def __init__(self, args, workers=1, env=None, bind=None, wait=True, tmp=None, port=None,
                 wrapper=None, popen_kw=None, remove_tmp=None, status_file=True):
        """workers=None leaves -w out (the config file or SRV_CMD_ARGS decides); port names
        the TCP port wait_ready probes when `bind` is given; wrapper is a command srv's
        command line is appended to (it must exec srv, so the pid stays the master's);
        popen_kw goes to Popen as is (pass_fds for socket activation). remove_tmp() removes
        the directory for files (`tmp`) when this made it, or when remove_tmp=True.
        status_file=False leaves the status file where srv puts it (its runtime directory)."""
        self.own_tmp = tmp is None if remove_tmp is None else remove_tmp
        self.tmp = tmp or tempfile.mkdtemp(prefix="srv-test-")
        self.port = port or free_port()
        self.bind = bind or f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.tmp, "error.log")
        self.pid_path = os.path.join(self.tmp, "srv.pid")
        self.status_path = os.path.join(self.tmp, "status.json")
        cmd = [SRV, "-b", self.bind] + (["-w", str(workers)] if workers is not None else []) + ["--pid", self.pid_path] \
            + (["--status-file", self.status_path] if status_file else []) + list(args)
        cmd = list(wrapper or []) + cmd
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True, **(popen_kw or {}))
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                # Not handed to a pool yet: nothing else would stop it or remove its files.
                self.stop()
                self.remove_tmp()
                raise

    def ready_pattern(self):
        """The master's own line for its first generation: `generation N ready: ...`, logged by
        this pid (N is 1 unless a HUP replaced the booting generation). Neither a worker's
        debug line (`worker P of generation N ready`) nor another master's line in the same
        file (a USR2 re-exec) nor any other "ready" (`did not report ready within`) matches."""
        return rf"\[{self.proc.pid}\] \[\w+\] generation \d+ ready: "

    def wait_ready(self, timeout=30, probe=True):
        """Waits for the first generation's line in the log and (unless probe is False, or
        srv listens on a Unix socket) for the TCP port to accept; fails if srv exits."""
        deadline = time.time() + timeout
        pattern = self.ready_pattern()
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"srv exited with {self.proc.returncode}:\n{self.read_log()}")
            if re.search(pattern, self.read_log()):
                try:
                    if probe and not self.bind.startswith("unix:"):
                        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"srv did not become ready (no line matching {pattern!r}):\n{self.read_log()}")

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=30, since=0):
        """Waits until the log (from byte offset `since`) matches `pattern`; returns the match."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.read_log()[since:])
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.read_log()}")

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def remove_tmp(self):
        """Removes the directory __init__ made (its log with it); stop() keeps it, since
        tests read the log after stopping. Some files may belong to another user."""
        if self.own_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def read_status(server):
    """The status file as the master last wrote it, or None (not written yet)."""
    try:
        with open(server.status_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def status(server, as_json=True, timeout=20):
    """`srv status --status-file F [--json]`, retried for a moment (the master writes the
    file twice a second, so right after "ready" it may not exist yet)."""
    cmd = [SRV, "status", "--status-file", server.status_path] + (["--json"] if as_json else [])
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        if out.returncode == 0 or time.time() > deadline:
            break
        time.sleep(0.1)
    assert out.returncode == 0, out
    return json.loads(out.stdout) if as_json else out.stdout


def server_pool():
    """A start(args, **kw) that starts Servers, and a stop_all() for all it started."""
    started = []

    def start(args, **kw):
        s = Server(args, **kw)
        started.append(s)
        return s

    def stop_all():
        try:
            for s in started:
                s.stop()
        finally:
            for s in started:
                s.remove_tmp()

    return start, stop_all


@pytest.fixture(scope="module")
def module_servers():
    """start(args, **kw) starts a server that lives until the end of the module."""
    start, stop_all = server_pool()
    yield start
    stop_all()


@pytest.fixture
def serve():
    """serve(args, workers=1, env=None) starts srv and stops it after the test."""
    start, stop_all = server_pool()
    yield start
    stop_all()


# ---------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: the tests need exact bytes on the wire, not a library's opinion.
# ---------------------------------------------------------------------------------------

class Response:
    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class Conn:
    """One TCP (or Unix) connection with a buffered reader of HTTP responses."""

    def __init__(self, port=None, unix=None, timeout=10):
        if unix:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_response(self, head=False):
        status_line = self._line().decode()
        _, code, reason = (status_line.split(" ", 2) + [""])[:3]
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            k, v = line.decode("latin-1").split(":", 1)
            headers.append((k.strip(), v.strip()))
        r = Response(int(code), reason, headers, b"")
        if head or r.status in (204, 304) or 100 <= r.status < 200:
            return r
        te = r.header("Transfer-Encoding")
        cl = r.header("Content-Length")
        if te and te.lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exact(size)
                assert self._exact(2) == b"\r\n"
            r.body = body
        elif cl is not None:
            r.body = self._exact(int(cl))
        else:
            try:
                while True:
                    self._fill()
            except (EOFError, ConnectionResetError):
                pass
            r.body, self.buf = self.buf, b""
        return r

    def is_closed(self, timeout=2):
        """True when the peer has closed the connection (after any buffered bytes)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def request(port, method="GET", path="/", headers=None, body=b"", version="HTTP/1.1"):
    """One request on a fresh connection; returns the Response."""
    c = Conn(port)
    try:
        h = {"Host": "127.0.0.1", "Connection": "close"}
        h.update(headers or {})
        if body and "Content-Length" not in h and "Transfer-Encoding" not in h:
            h["Content-Length"] = str(len(body))
        head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        c.send(head.encode() + (body if isinstance(body, bytes) else body.encode()))
        return c.read_response(head=(method == "HEAD"))
    finally:
        c.close()
