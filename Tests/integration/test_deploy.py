"""Deployable as operators deploy (issue 12): the operator interface, privileges, the
runtime directory and snapshots, trusted proxies. Each test follows a sentence of the
README, `srv --help` or the issue, and runs the real binary as an ordinary user unless it
is marked `root`."""
import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import SRV, Conn, answers, free_port, plugin, request, snapshots_held, unprivileged_user, wait_until


def srv(*args, env=None, timeout=60):
    return subprocess.run([SRV, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def environ_of(port, headers=None):
    r = request(port, path="/environ", headers=headers)
    assert r.status == 200, r
    return json.loads(r.body)


# MARK: - The command line

def test_help_shows_the_serving_flags():
    out = srv("--help")
    assert out.returncode == 0, out.stderr
    for flag in ["--app", "--bind", "--workers", "--threads", "--timeout", "--user", "--group", "--chdir",
                 "--env", "--umask", "--forwarded-allow-ips", "--check-config"]:
        assert flag in out.stdout, f"{flag} missing from srv --help:\n{out.stdout}"
    assert "srv check" in out.stdout and "srv status" in out.stdout


def test_version_names_srv_the_abi_and_swift():
    out = srv("--version")
    assert out.returncode == 0
    assert re.fullmatch(r"srv \d+\.\d+\.\d+ \(gateway ABI \d+\.\d+, Swift \d+\.\d+\.\d+\)\n", out.stdout), out.stdout


def test_the_serve_subcommand_still_works():
    out = srv("serve", "--app", plugin("hello"), "--check-config")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("bind", ["8000", ":8000"])
def test_a_bare_port_says_which_address_it_binds(bind):
    out = srv("--app", plugin("hello"), "-b", bind, "--check-config")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "127.0.0.1:8000 (this machine only)" in out.stdout, out.stdout


def test_a_bind_with_a_scheme_is_a_usage_error():
    out = srv("--app", plugin("hello"), "-b", "http://127.0.0.1:8000", "--check-config")
    assert out.returncode == 64, out
    assert "without a scheme" in out.stderr and "-b 127.0.0.1:8000" in out.stderr, out.stderr


def test_gunicorn_underscore_spellings_are_aliases():
    out = srv("--app", plugin("hello"), "--limit-request-field_size", "100", "--max_requests", "5", "--check-config")
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_bad_value_in_a_config_file_names_the_file_and_line(tmp_path):
    conf = tmp_path / "srv.conf"
    conf.write_text(f"app = {plugin('hello')}\n# a comment\nworkers = many\n")
    out = srv("-c", str(conf), "--check-config")
    assert out.returncode == 64, out
    assert f"{conf} line 3" in out.stderr, out.stderr
    conf.write_text(f"app = {plugin('hello')}\nworkers = 0\n")
    out = srv("-c", str(conf), "--check-config")
    assert out.returncode == 64, out
    assert "workers" in out.stderr and f"{conf} line 2" in out.stderr, out.stderr


def test_check_config_checks_every_application_like_srv_check():
    out = srv("--mount", f"/a={plugin('hello')}", "--mount", f"/b={plugin('badmagic')}", "--check-config")
    assert out.returncode == 1, out
    assert "libhello.so" in out.stdout and "INVALID" in out.stdout and "magic" in out.stdout, out.stdout


def test_an_access_log_that_cannot_be_opened_stops_srv_at_start(tmp_path):
    out = srv("--app", plugin("hello"), "-b", f"127.0.0.1:{free_port()}",
              "--access-logfile", str(tmp_path / "missing-dir" / "access.log"), timeout=30)
    assert out.returncode == 64, out
    assert "access-logfile" in out.stderr and "does not exist" in out.stderr, out.stderr


def test_access_logfile_dash_is_standard_output_as_gunicorn(tmp_path):
    """README: Gunicorn's names and defaults. `--access-logfile -` is stdout; the error log
    stays on stderr."""
    port = free_port()
    p = subprocess.Popen([SRV, "--app", plugin("hello"), "-b", f"127.0.0.1:{port}", "--access-logfile", "-",
                          "--runtime-dir", str(tmp_path / "run")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: answers(port), message="srv to serve")
        assert request(port, path="/logged-here").status == 200
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert "GET /logged-here" in out, (out, err)
    assert "GET /logged-here" not in err and "generation 1 ready" in err, err


def test_a_bare_port_listens_on_loopback_only(tmp_path):
    """`-b 8000` once bound every IPv4 address of the machine. A bare port is loopback;
    every address is for an address that says so; --help says which."""
    port = free_port()
    out = srv("--app", plugin("hello"), "-b", str(port), "--check-config")
    assert out.returncode == 0 and f"{port} -> 127.0.0.1:{port} (this machine only)" in out.stdout, out
    out = srv("--app", plugin("hello"), "-b", f"0.0.0.0:{port}", "--check-config")
    assert f"0.0.0.0:{port} (every IPv4 address of this machine)" in out.stdout, out
    assert "A bare PORT is 127.0.0.1:PORT" in srv("--help").stdout


def test_a_missing_apps_dir_is_an_error_at_start(tmp_path):
    out = srv("--apps-dir", str(tmp_path / "nope"), "-b", f"127.0.0.1:{free_port()}", timeout=30)
    assert out.returncode == 64, out
    assert "apps-dir" in out.stderr and "No such file" in out.stderr, out.stderr


def test_forwarded_allow_ips_refuses_a_value_that_can_never_match():
    out = srv("--app", plugin("hello"), "--forwarded-allow-ips", "127.0.0.1,localhost", "--check-config")
    assert out.returncode == 64, out
    assert '"localhost" can never match' in out.stderr, out.stderr
    out = srv("--app", plugin("hello"), "--forwarded-allow-ips", "10.0.0.0/33", "--check-config")
    assert out.returncode == 64, out


def test_the_swift_toolchain_stamp_of_another_swift_is_refused_by_name():
    out = srv("check", plugin("otherswift"))
    assert out.returncode == 1, out
    mine = re.search(r"Swift (\S+)\)", srv("--version").stdout).group(1)
    assert "Swift 5.10.1" in out.stdout and f"Swift {mine}" in out.stdout, out.stdout
    report = json.loads(srv("check", "--json", plugin("otherswift")).stdout)[0]
    assert report["reason"] == "swift-toolchain-mismatch", report


def test_a_reload_refuses_a_plugin_of_another_swift(serve, tmp_path):
    app = tmp_path / "libapp.so"
    shutil.copy(plugin("hello"), app)
    s = serve(["--app", str(app)])
    shutil.copy(plugin("otherswift"), app)
    mark = len(s.read_log())
    s.signal(1)
    s.wait_log(r"reload failed: .*Swift 5\.10\.1", since=mark, timeout=30)
    assert request(s.port).body == b"Hello, World!\n"


# MARK: - Trusted proxies

@pytest.mark.parametrize("allow, trusted", [("127.0.0.0/8", True), ("::ffff:127.0.0.0/104", True),
                                            ("10.0.0.0/8", False), ("unix", False), ("*", True)])
def test_forwarded_allow_ips_takes_cidr_ranges(serve, allow, trusted):
    s = serve(["--app", plugin("conformance"), "--forwarded-allow-ips", allow])
    env = environ_of(s.port, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert (env["REMOTE_ADDR"], env["URL_SCHEME"]) == (("203.0.113.7", "https") if trusted else ("127.0.0.1", "http")), env


def unix_request(path, headers):
    c = Conn(unix=path)
    try:
        c.send("GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
        r = c.read_response()
        assert r.status == 200, r
        return json.loads(r.body)
    finally:
        c.close()


def test_a_proxy_on_the_unix_socket_is_trusted_by_default(serve, tmp_path):
    sock = str(tmp_path / "srv.sock")
    serve(["--app", plugin("conformance")], bind=f"unix:{sock}")
    env = unix_request(sock, {"X-Forwarded-For": "198.51.100.4", "X-Forwarded-Proto": "https"})
    assert env["REMOTE_ADDR"] == "198.51.100.4" and env["URL_SCHEME"] == "https", env


# MARK: - Unix socket mode

def test_the_unix_socket_is_open_to_local_users_by_default_and_umask_narrows_it(serve, tmp_path):
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    serve(["--app", plugin("hello")], bind=f"unix:{a}")
    serve(["--app", plugin("hello"), "-m", "007"], bind=f"unix:{b}")
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o777
    assert stat.S_IMODE(os.stat(b).st_mode) == 0o770


# MARK: - Runtime directory and snapshots

def test_snapshots_no_generation_uses_are_freed(serve, tmp_path):
    app = tmp_path / "libapp.so"
    shutil.copy(plugin("hello"), app)
    s = serve(["--app", str(app)])
    builds = [plugin("valid"), plugin("hello"), plugin("conformance"), plugin("valid")]
    for n, build in enumerate(builds, start=2):
        shutil.copy(build, app)
        mark = len(s.read_log())
        s.signal(1)
        s.wait_log(rf"generation {n} ready", since=mark, timeout=30)
    wait_until(lambda: len(snapshots_held(s.proc.pid)) == 1, timeout=30,
               message=lambda: f"the master to hold one snapshot, not {snapshots_held(s.proc.pid)}")
    assert request(s.port).body == b"valid\n"


def test_status_with_a_stale_pid_file_says_so_in_one_short_line(tmp_path):
    """A pid file left by a killed srv: `srv status --pid` says the process is gone, not a
    line naming every directory it searched."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{dead.pid}\n")
    out = srv("status", "--pid", str(stale))
    assert out.returncode != 0, out
    assert f"no process {dead.pid} (from {stale}) is running" in out.stderr, out.stderr
    assert len(out.stderr.splitlines()[0]) < 300, out.stderr
    mine = tmp_path / "mine.pid"  # a live process that is no srv master of this user
    mine.write_text(f"{os.getpid()}\n")
    out = srv("status", "--pid", str(mine))
    assert out.returncode != 0 and f"master-{os.getpid()}.json" in out.stderr and "--status-file" in out.stderr, out.stderr
    assert len(out.stderr.splitlines()[0]) < 400, out.stderr


def test_status_finds_the_master_in_its_runtime_directory(tmp_path):
    run = f"/tmp/srv-status-test-{os.getpid()}-{free_port()}"
    port = free_port()
    pidfile = tmp_path / "srv.pid"
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([SRV, "--app", plugin("hello"), "-b", f"127.0.0.1:{port}", "--pid", str(pidfile)],
                         stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, RUNTIME_DIRECTORY=run))
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not os.path.exists(f"{run}/master-{p.pid}.json"):
            time.sleep(0.1)
        assert stat.S_IMODE(os.stat(run).st_mode) & 0o022 == 0
        out = srv("status", "--pid", str(pidfile), "--json", env={"RUNTIME_DIRECTORY": ""})
        assert out.returncode == 0, out
        assert json.loads(out.stdout)["masterPID"] == p.pid
    finally:
        p.terminate()
        p.wait(timeout=30)
        log.close()
        shutil.rmtree(run, ignore_errors=True)


# MARK: - Environment and working directory

def test_env_and_chdir(serve, tmp_path):
    (tmp_path / "apps").mkdir()
    shutil.copy(plugin("hello"), tmp_path / "apps" / "libhello.so")
    s = serve(["--chdir", str(tmp_path), "--app", "apps/libhello.so", "-e", "SRV_TEST_SETTING=a=b"])
    assert request(s.port).status == 200
    worker = s.worker_pids()[0]
    with open(f"/proc/{worker}/environ", "rb") as f:
        assert b"SRV_TEST_SETTING=a=b" in f.read().split(b"\0")
    assert os.readlink(f"/proc/{worker}/cwd") == str(tmp_path)


def test_user_needs_root_when_run_as_an_ordinary_user():
    if os.geteuid() == 0:
        pytest.skip("run as root, -u is allowed")
    out = srv("--app", plugin("hello"), "-u", "root", "--check-config")
    assert out.returncode == 64 and "needs root" in out.stderr, out


# MARK: - As root: privileges

def ids_of(pid):
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    uid = int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+(\d+)", text, re.M).group(1))
    return uid, gid


def low_port():
    for port in range(900, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024")


@pytest.mark.root
def test_workers_of_another_user_start_where_root_srv_ran_before(serve, tmp_path):
    """Run as root with -u, as the README and Examples/nginx show it, on a machine where a
    root srv ran before (its runtime directory $XDG_RUNTIME_DIR/srv is root's, 0700) and
    with the plugin in a directory only root can read: the workers need neither (srv
    refused to start, or its workers could not load the plugin)."""
    user = pwd.getpwnam(unprivileged_user())
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copy(plugin("hello"), private / "libhello.so")
    env = {"XDG_RUNTIME_DIR": str(xdg), "RUNTIME_DIRECTORY": ""}
    first = serve(["--app", str(private / "libhello.so")], env=env, status_file=False)
    assert request(first.port).status == 200
    first.stop()
    assert (xdg / "srv").is_dir() and os.stat(xdg / "srv").st_uid == 0
    s = serve(["--app", str(private / "libhello.so"), "-u", user.pw_name], env=env, status_file=False)
    assert request(s.port).body == b"Hello, World!\n"
    for w in s.worker_pids():
        assert ids_of(w)[0] == user.pw_uid
    assert os.path.exists(xdg / "srv" / f"master-{s.proc.pid}.json")


@pytest.mark.root
def test_master_binds_a_low_port_and_workers_run_as_the_user(serve, tmp_path):
    user = pwd.getpwnam(unprivileged_user())
    port = low_port()
    # The workers append to the access log, so the directories above it must let the user
    # in (pytest's own tmp_path lives in a root-only directory); `serve` removes it after
    # stopping the server (remove_tmp=True).
    tmp = tempfile.mkdtemp(prefix="srv-root-test-")
    os.chmod(tmp, 0o755)
    access = pathlib.Path(tmp) / "access.log"
    s = serve(["--app", plugin("conformance"), "-u", user.pw_name, "--access-logfile", str(access)],
              bind=f"127.0.0.1:{port}", port=port, tmp=tmp, remove_tmp=True)
    assert request(port, path="/environ").status == 200
    assert ids_of(s.proc.pid)[0] == 0
    for w in s.worker_pids():
        assert ids_of(w) == (user.pw_uid, user.pw_gid)
    wait_until(lambda: access.exists() and "GET /environ" in access.read_text(), timeout=30,
               message="the worker, as the user, writes the access log")
    assert os.stat(access).st_uid == user.pw_uid


# MARK: - srv's own errors are logged

def test_a_connection_srv_cannot_set_up_is_logged_as_a_warning(tmp_path):
    """Out of descriptors, a new connection is closed by srv: the log says so, at warning
    level and not once per connection."""
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    port = free_port()
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([SRV, "--app", plugin("hello"), "-b", f"127.0.0.1:{port}",
                          "--runtime-dir", str(tmp_path / "run")],
                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=low_limit)
    conns = []
    try:
        wait_until(lambda: p.poll() is not None or re.search(rf"\[{p.pid}\] \[\w+\] generation \d+ ready: ",
                                                              (tmp_path / "log").read_text()),
                   timeout=30, message=lambda: f"the first generation to be ready:\n{(tmp_path / 'log').read_text()}")
        assert p.poll() is None, (tmp_path / "log").read_text()
        assert "64 open files per process" in (tmp_path / "log").read_text()
        for _ in range(100):
            try:
                conns.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        deadline = time.time() + 30
        while time.time() < deadline and "cannot set up a new connection" not in (tmp_path / "log").read_text():
            time.sleep(0.1)
        text = (tmp_path / "log").read_text()
        warnings = [l for l in text.splitlines() if "cannot set up a new connection" in l]
        assert warnings and all("[WARNING]" in l for l in warnings), text
        assert len(warnings) <= 3, "the same error is reported once per interval, not per connection"
    finally:
        for c in conns:
            c.close()
        p.terminate()
        p.wait(timeout=30)
        log.close()


@pytest.mark.root
def test_root_finds_the_status_of_another_users_master(tmp_path):
    """As with a systemd unit's DynamicUser: the master runs as another user with its
    runtime directory in /run-like place; `srv status --pid FILE` run by root finds it."""
    user = pwd.getpwnam(unprivileged_user())
    run = f"/tmp/srv-status-other-{os.getpid()}"
    home = tempfile.mkdtemp(prefix="srv-other-user-")
    os.chmod(home, 0o755)
    pidfile = os.path.join(home, "srv.pid")
    os.chown(home, user.pw_uid, user.pw_gid)
    port = free_port()
    p = subprocess.Popen(["runuser", "-u", user.pw_name, "--", "env", f"RUNTIME_DIRECTORY={run}", SRV, "--app", plugin("hello"),
                          "-b", f"127.0.0.1:{port}", "--pid", pidfile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        found = None
        while time.time() < deadline:
            if os.path.exists(pidfile):
                out = srv("status", "--pid", pidfile, "--json", env={"RUNTIME_DIRECTORY": "", "XDG_RUNTIME_DIR": ""})
                if out.returncode == 0:
                    found = json.loads(out.stdout)
                    break
            time.sleep(0.2)
        assert found, out
        with open(pidfile) as f:
            assert found["masterPID"] == int(f.read())
        assert os.stat(run).st_uid == user.pw_uid
    finally:
        subprocess.run(["pkill", "-TERM", "-f", f"127.0.0.1:{port}"])
        p.wait(timeout=30)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.root
def test_root_without_user_is_a_choice_the_log_names(serve):
    """Started as root without -u, the applications run as root: srv says so at start and
    names the flag, as nginx and PostgreSQL make running as root a visible choice."""
    s = serve(["--app", plugin("hello")])
    assert "[WARNING] running as root without -u/--user" in s.read_log(), s.read_log()
    assert "-u USER" in s.read_log()


def test_an_ordinary_user_gets_no_root_warning(serve):
    if os.geteuid() == 0:
        pytest.skip("runs as an ordinary user")
    s = serve(["--app", plugin("hello")])
    assert "running as root" not in s.read_log()
