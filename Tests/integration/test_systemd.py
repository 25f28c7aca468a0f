"""Examples/systemd: the shipped units are valid, and srv runs their ExecStart as systemd would.

systemd-analyze verify checks copies of the units (with ExecStart's /usr/local/bin/srv
replaced by the binary under test, since verify checks that the executable exists). The
other tests take ExecStart's command line from the unit itself and run it the way systemd
does for this unit: the socket of srv-blog.socket at fd 3 (LISTEN_FDS), NOTIFY_SOCKET,
RUNTIME_DIRECTORY for RuntimeDirectory=, the Environment= lines. Only the application
path and /run are replaced, by a real plugin and a temporary directory.
"""
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SRV, pid_alive, plugin

UNITS = os.path.join(ROOT, "Examples", "systemd")
SERVICE = os.path.join(UNITS, "srv-blog.service")
SOCKET = os.path.join(UNITS, "srv-blog.socket")
INSTALLED_SRV = "/usr/local/bin/srv"
ANALYZE = shutil.which("systemd-analyze")


def unit_values(path, section, key):
    """Every value of `key` in `[section]` (systemd allows repeating a key), comments and
    blank lines ignored."""
    values, current = [], None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                current = line.strip("[]")
            elif current == section and "=" in line:
                k, v = line.split("=", 1)
                if k.strip() == key:
                    values.append(v.strip())
    return values


def one_value(path, section, key):
    values = unit_values(path, section, key)
    assert len(values) == 1, f"{path}: expected one {key}= in [{section}], found {values}"
    return values[0]


def exec_start_args():
    args = shlex.split(one_value(SERVICE, "Service", "ExecStart"))
    assert args[0] == INSTALLED_SRV, args
    return args


def runtime_dir_name():
    return one_value(SERVICE, "Service", "RuntimeDirectory")


def environment_lines():
    env = {}
    for value in unit_values(SERVICE, "Service", "Environment"):
        for pair in shlex.split(value):
            k, v = pair.split("=", 1)
            env[k] = v
    return env


def systemd_command(app, tmp):
    """ExecStart's arguments for this machine, and the environment systemd would give:
    SRV_BIN for /usr/local/bin/srv, `app` for the application, a temporary directory for
    /run (where RuntimeDirectory= lives), STATE_DIRECTORY, the Environment= lines."""
    args = exec_start_args()
    args[0] = SRV
    i = args.index("--app")
    args[i + 1] = app
    name = runtime_dir_name()
    run = os.path.join(tmp, "run")
    runtime = os.path.join(run, name)
    os.makedirs(runtime, mode=0o755)  # RuntimeDirectoryMode= defaults to 0755
    os.chmod(runtime, 0o755)
    state = os.path.join(tmp, "state")
    os.makedirs(state, mode=0o755)
    args = [a.replace("/run/", run + "/", 1) if a.startswith("/run/") else a for a in args]
    env = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "RUNTIME_DIRECTORY",
              "XDG_RUNTIME_DIR", "SRV_CMD_ARGS"):
        env.pop(k, None)
    env.update(environment_lines())
    env.update(RUNTIME_DIRECTORY=runtime, STATE_DIRECTORY=state)
    return args, env, runtime


# ---------------------------------------------------------------------------------------
# systemd-analyze verify
# ---------------------------------------------------------------------------------------

def _verify(paths, cwd):
    r = subprocess.run([ANALYZE, "verify", *paths], capture_output=True, text=True, cwd=cwd, timeout=120)
    return r.returncode, (r.stdout + r.stderr).strip()


def test_units_pass_systemd_analyze_verify(tmp_path):
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    # Can verify run here, and does it report a unit's problems? A probe with one unknown key.
    probe = tmp_path / "probe" / "srv-probe.service"
    probe.parent.mkdir()
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\nNoSuchKey=1\n")
    try:
        rc, out = _verify([str(probe)], str(probe.parent))
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"systemd-analyze verify cannot run in this container: {e}")
    if "NoSuchKey" not in out:
        pytest.skip(f"systemd-analyze verify cannot check units in this container (exit {rc}): {out[:500]}")

    copies = tmp_path / "units"
    copies.mkdir()
    for path in (SERVICE, SOCKET):
        with open(path) as f:
            text = f.read()
        # verify checks that ExecStart's executable exists: the binary under test stands in.
        (copies / os.path.basename(path)).write_text(text.replace(INSTALLED_SRV, SRV))
    names = [os.path.basename(SERVICE), os.path.basename(SOCKET)]
    rc, out = _verify([str(copies / n) for n in names], str(copies))
    about_ours = [line for line in out.splitlines() if any(n.split(".")[0] in line for n in names)]
    assert not about_ours, "\n".join(about_ours)
    assert rc == 0, out


# ---------------------------------------------------------------------------------------
# What the units promise about srv
# ---------------------------------------------------------------------------------------

def test_units_settings_fit_together():
    """TimeoutStopSec outlasts srv's graceful stop; the pid file is in RuntimeDirectory=;
    srv keeps its runtime files where $RUNTIME_DIRECTORY says (no --runtime-dir); the
    socket is systemd's (no -b)."""
    args = exec_start_args()
    assert one_value(SERVICE, "Service", "Type") == "notify"
    assert one_value(SERVICE, "Service", "NotifyAccess") == "all"
    assert one_value(SERVICE, "Service", "KillMode") == "mixed"
    assert one_value(SERVICE, "Service", "DynamicUser") == "yes"
    assert one_value(SERVICE, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    graceful = float(args[args.index("--graceful-timeout") + 1]) if "--graceful-timeout" in args else 30.0
    stop = one_value(SERVICE, "Service", "TimeoutStopSec")
    assert re.fullmatch(r"\d+s?", stop), stop
    assert int(stop.rstrip("s")) > graceful, (stop, graceful)
    pid = args[args.index("--pid") + 1]
    assert pid.startswith(f"/run/{runtime_dir_name()}/"), pid
    for flag in ("--runtime-dir", "--status-file", "-b", "--bind"):
        assert flag not in args, f"ExecStart has {flag}: {args}"
    listen = one_value(SOCKET, "Socket", "ListenStream")
    assert listen == "127.0.0.1:8000", listen  # the srv_tcp upstream of Examples/nginx/srv-site.conf


@pytest.mark.parametrize("app", ["hello", "blog"])
def test_exec_start_passes_check_config(tmp_path, app):
    if app == "blog":
        path = os.environ.get("BLOG_SO", os.path.join(ROOT, ".build", "release", "libblog.so"))
        if not os.path.exists(path):
            pytest.skip(f"{path} missing: build the blog (make blog)")
    else:
        path = plugin(app)
    args, env, runtime = systemd_command(path, str(tmp_path))
    if app == "blog":
        env["BLOG_DATA_DIR"] = str(tmp_path / "state")
        env["BLOG_STATIC_DIR"] = os.path.join(ROOT, "Examples", "blog", "static")
    r = subprocess.run(args + ["--check-config"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, f"{shlex.join(args)} --check-config exited {r.returncode}:\n{r.stdout}{r.stderr}"


def test_commented_exec_start_pre_check_works(tmp_path):
    """The optional `#ExecStartPre=/usr/local/bin/srv check APP` line, uncommented, passes
    for a valid application and fails for a broken one."""
    with open(SERVICE) as f:
        lines = [line[len("#ExecStartPre="):].strip() for line in f if line.startswith("#ExecStartPre=")]
    assert len(lines) == 1, lines
    args = shlex.split(lines[0])
    assert args[:2] == [INSTALLED_SRV, "check"], args
    _, env, _ = systemd_command(plugin("hello"), str(tmp_path))
    for app, valid in (("hello", True), ("undefined", False)):
        r = subprocess.run([SRV, *args[1:-1], plugin(app)], capture_output=True, text=True, env=env, timeout=120)
        assert (r.returncode == 0) == valid, f"{app}: exit {r.returncode}\n{r.stdout}{r.stderr}"


# ---------------------------------------------------------------------------------------
# Running as systemd runs it: socket activation, sd_notify, RuntimeDirectory=, USR2
# ---------------------------------------------------------------------------------------

class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: datagrams with the sender's pid (SCM_CREDENTIALS),
    which is what NotifyAccess= is judged on."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.got = []  # (sender pid, {key: value})

    def receive(self, until, timeout=60, what="message"):
        """Reads datagrams until one satisfies until(pid, fields); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                break
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.got.append((pid, fields))
            if until(pid, fields):
                return pid, fields
        raise AssertionError(f"never received {what}; got {self.got}")

    def close(self):
        self.sock.close()


def _wait_gone(pid, timeout=60):
    deadline = time.time() + timeout
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def _get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_exec_start_under_systemd(tmp_path):
    """The unit's ExecStart as systemd starts it: READY=1 with MAINPID from the master,
    runtime files in $RUNTIME_DIRECTORY, and on USR2 the new master announces itself
    (MAINPID=, READY=1) from its own pid, which is not the main pid systemd knows: that is
    why the unit says NotifyAccess=all. With NotifyAccess=all systemd takes STOPPING=1 from
    any process of the service as the service stopping (and kills it TimeoutStopSec later),
    so the old master, retiring, must not send it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))  # ListenStream=127.0.0.1:8000, on a free port
    listener.listen(int(one_value(SOCKET, "Socket", "Backlog")))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    notify = NotifySocket(str(tmp_path / "notify"))
    args, env, runtime = systemd_command(plugin("conformance"), str(tmp_path))
    env["NOTIFY_SOCKET"] = notify.path
    # systemd's contract: the socket at fd 3, LISTEN_FDS=1, LISTEN_PID = the pid that execs srv.
    wrapper = [sys.executable, "-c",
               "import os, sys; fd = int(sys.argv[1]); fd != 3 and (os.dup2(fd, 3), os.close(fd)); "
               "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
               "os.execv(sys.argv[2], sys.argv[2:])", str(fd)]
    log_path = tmp_path / "srv.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(wrapper + args, stdout=log, stderr=subprocess.STDOUT, env=env,
                            pass_fds=(fd,), start_new_session=True)
    listener.close()  # srv holds its own copy
    new_master = None

    def srv_log():
        return log_path.read_text(errors="replace")[-6000:]

    try:
        main = proc.pid
        pid, fields = notify.receive(lambda p, f: "READY" in f, what="READY=1")
        assert fields.get("MAINPID") == str(main) and pid == main, (pid, fields)
        assert _get(port).startswith(b"HTTP/1.1 200"), srv_log()

        # RuntimeDirectory=: the pid file and the status file are there.
        with open(os.path.join(runtime, "srv.pid")) as f:
            assert f.read().strip() == str(main)
        names = os.listdir(runtime)
        assert f"master-{main}.json" in names, names

        # USR2: a new master, started by this one.
        os.kill(main, signal.SIGUSR2)
        pid, fields = notify.receive(lambda p, f: "MAINPID" in f and f["MAINPID"] != str(main),
                                     what="MAINPID= of the new master")
        new_master = int(fields["MAINPID"])
        assert pid == new_master != main, (pid, fields)  # not the main pid: NotifyAccess=all
        assert "READY" in fields, fields
        handover = len(notify.got)
        assert proc.wait(timeout=60) == 0, srv_log()  # the old master retires
        assert _get(port).startswith(b"HTTP/1.1 200"), srv_log()

        # systemctl stop: TERM to the (new) main pid only (KillMode=mixed).
        os.kill(new_master, signal.SIGTERM)
        notify.receive(lambda p, f: p == new_master and "STOPPING" in f, what="STOPPING=1 from the new master")
        # Every datagram the old master sent was queued before it exited, so before this
        # STOPPING=1 (sent after): the socket's queue is in order, all of them are read.
        from_old = [f for p, f in notify.got[handover:] if p == main]
        assert not any("STOPPING" in f for f in from_old), \
            f"the retiring master (pid {main}) sent STOPPING=1 after the new one took over: " \
            f"with NotifyAccess=all systemd would stop the service. From it: {from_old}"
        assert _wait_gone(new_master), srv_log()
    finally:
        for pid in (proc.pid, new_master):
            if pid and pid_alive(pid):
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if proc.poll() is None:
            proc.wait()
        log.close()
        notify.close()
