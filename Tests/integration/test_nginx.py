"""srv behind a real nginx, configured by the shipped Examples/nginx/srv-site.conf.

Each test starts nginx (Debian's, from `Tests/deps.sh test`) as the current user, with a
generated nginx.conf whose pid, logs and temp paths live in a temporary directory and whose
upstream and server blocks are Examples/nginx/srv-site.conf itself, with only the socket
path, the ports, the certificate and the static directory replaced: these tests test the
file operators copy, not a copy of it. srv serves libconformance.so behind it over the
Unix-socket upstream and over the TCP one.

The client connects from 127.0.0.9 (Linux routes all of 127/8 to loopback), so the address
the application sees can only have come from nginx's X-Forwarded-For. The test marked
`root` deploys as an operator would: srv started by root handing its workers to an
ordinary user (-u), nginx started by root with its workers as nobody.
"""
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT, Conn, free_port, plugin, server_pool, unprivileged_user

SITE = os.path.join(ROOT, "Examples", "nginx", "srv-site.conf")
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                       if os.access(p, os.X_OK)), None)
OPENSSL = shutil.which("openssl")
CLIENT_ADDR = "127.0.0.9"
MiB = 1 << 20
SRV_BODY_LIMIT = 64 * MiB  # srv's --limit-request-body default

pytestmark = pytest.mark.skipif(
    NGINX is None or OPENSSL is None,
    reason="nginx and openssl are needed (Debian's nginx-light and openssl: run `Tests/deps.sh test`)")


# ---------------------------------------------------------------------------------------
# The site file, rendered for a test
# ---------------------------------------------------------------------------------------

def render_site(sock_path, tcp_port, upstream, http_port, https_port, cert, key, static_dir):
    """Examples/nginx/srv-site.conf with the test's socket path, ports, certificate and
    static directory. Every replacement must find its target: when the file changes, this
    fails and says what to update, instead of silently testing something else."""
    with open(SITE) as f:
        text = f.read()

    def replace(pattern, repl, what):
        nonlocal text
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n > 0, f"{SITE} has no {what} (pattern {pattern!r}) any more: update test_nginx.py"

    replace(r"unix:/run/srv/srv\.sock", f"unix:{sock_path}", "Unix-socket upstream")
    replace(r"^(\s*server\s+)127\.0\.0\.1:8000\b", rf"\g<1>127.0.0.1:{tcp_port}", "TCP upstream")
    if upstream == "tcp":
        replace(r"^(\s*proxy_pass\s+)http://srv_unix;", r"\g<1>http://srv_tcp;", "proxy_pass to srv_unix")
    replace(r"^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{cert};", "ssl_certificate")
    replace(r"^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", "ssl_certificate_key")
    replace(r"\balias\s+/srv/apps/blog-static/;", f"alias {static_dir}/;", "static location")

    found = {"plain": 0, "ssl": 0}

    def listen(m):
        indent, params = m.group(1), m.group(2).split()
        if params[0].startswith("["):  # IPv6: the test uses 127.0.0.1 only
            return f"{indent}# (test) left out: listen {' '.join(params)};"
        kind = "ssl" if "ssl" in params[1:] else "plain"
        found[kind] += 1
        params[0] = f"127.0.0.1:{https_port if kind == 'ssl' else http_port}"
        return f"{indent}listen {' '.join(params)};"

    text = re.sub(r"^(\s*)listen\s+([^;]+);", listen, text, flags=re.M)
    assert found == {"plain": 1, "ssl": 1}, f"{SITE}: expected one plain and one ssl IPv4 listen line, found {found}"
    return text


def nginx_modules_left_out():
    out = subprocess.run([NGINX, "-V"], capture_output=True, text=True)
    return set(re.findall(r"--without-http_(\w+)_module", out.stdout + out.stderr))


def main_conf(tmp, site, user=None):
    """An nginx.conf that keeps everything in `tmp`, with the site inside http { }.

    `user` is the `user` directive for a master started by root. Without one, a master
    started by root still runs its workers as this user (nginx's default would be nobody,
    who cannot enter the test's private temporary directory); otherwise the workers are
    this user anyway."""
    if user is None and os.geteuid() == 0:
        user = f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"
    left_out = nginx_modules_left_out()
    temp_paths = "\n".join(f"    {name}_temp_path {tmp}/{name}_temp;"
                           for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
                           if name not in left_out)
    types = "include /etc/nginx/mime.types;" if os.path.exists("/etc/nginx/mime.types") else ""
    return f"""{f"user {user};" if user else ""}
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    {types}
    default_type application/octet-stream;
    access_log {tmp}/nginx-access.log;
{temp_paths}

{site}
}}
"""


def make_cert(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    r = subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                        "-days", "1", "-keyout", key, "-out", cert], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return cert, key


class Nginx:
    """nginx in the foreground (daemon off), its master our child; stop() ends it."""

    def __init__(self, tmp, sock_path, tcp_port, upstream="unix", user=None):
        self.tmp = tmp
        cert, key = make_cert(tmp)
        self.static_dir = os.path.join(tmp, "static")
        os.makedirs(self.static_dir, exist_ok=True)
        self.conf = os.path.join(tmp, "nginx.conf")
        self.error_log = os.path.join(tmp, "nginx-error.log")
        self.out_path = os.path.join(tmp, "nginx.out")
        self.out = open(self.out_path, "ab")
        for attempt in range(3):  # a free port taken by someone else in between: new ports
            self.http_port, self.https_port = free_port(), free_port()
            self.site = render_site(sock_path, tcp_port, upstream, self.http_port, self.https_port, cert, key,
                                    self.static_dir)
            with open(self.conf, "w") as f:
                f.write(main_conf(tmp, self.site, user))
            self.proc = subprocess.Popen(self.command(), stdout=self.out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            try:
                if self._wait_listening() or attempt == 2:
                    break
            except BaseException:
                self.stop()
                raise
        if self.proc.poll() is not None:
            self.out.close()
            raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.logs()}")

    def _wait_listening(self):
        """True once both ports accept; False when nginx exited because a port was taken."""
        deadline = time.time() + 30
        pending = [self.http_port, self.https_port]
        while pending:
            if self.proc.poll() is not None:
                return "Address already in use" not in self.logs()
            if time.time() > deadline:
                raise AssertionError(f"nginx did not listen on {pending}:\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", pending[0]), timeout=1).close()
                pending.pop(0)
            except OSError:
                time.sleep(0.05)
        return True

    def command(self, *extra):
        return [NGINX, "-p", self.tmp, "-c", self.conf, "-e", self.error_log, *extra]

    def logs(self):
        text = ""
        for path in (self.out_path, self.error_log):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f"--- {path}\n{f.read()[-6000:]}"
        return text

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown; the master stops its workers
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid line for {pid}")


# ---------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------

def _tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
    return ctx


class ClientConn(Conn):
    """conftest.Conn to nginx on 127.0.0.1 from a chosen source address, over TLS or not."""

    def __init__(self, port, tls=False, source=CLIENT_ADDR, timeout=60):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        self.sock = _tls_context().wrap_socket(sock, server_hostname="localhost") if tls else sock
        self.buf = b""


def fetch(port, method="GET", path="/environ", headers=None, body=b"", tls=False, chunked=False):
    """One request on a fresh connection to nginx (Connection: close); the Response."""
    c = ClientConn(port, tls=tls)
    try:
        h = {"Host": "example.com", "Connection": "close"}
        h.update(headers or {})
        if chunked:
            h["Transfer-Encoding"] = "chunked"
            step = 64 * 1024
            payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                               for i in range(0, len(body), step)) + b"0\r\n\r\n"
        else:
            if body or method in ("POST", "PUT"):
                h.setdefault("Content-Length", str(len(body)))
            payload = body
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        c.send(head.encode() + payload)
        return c.read_response(head=(method == "HEAD"))
    finally:
        c.close()


def environ_via(nginx, **kw):
    r = fetch(nginx.https_port if kw.get("tls") else nginx.http_port, **kw)
    assert r.status == 200, f"{r}\n{nginx.logs()}"
    return json.loads(r.body)


def header(env, name):
    values = [v for k, v in env["headers"] if k.lower() == name.lower()]
    return values[0] if values else None


# ---------------------------------------------------------------------------------------
# srv + nginx
# ---------------------------------------------------------------------------------------

class Stack:
    """srv (libconformance.so, an access log) behind nginx over `upstream` ("unix"/"tcp")."""

    def __init__(self, start, upstream, srv_args=(), tmp=None, srv_tmp=None, nginx_user=None, workers=1):
        self.tmp = tmp or tempfile.mkdtemp(prefix="srv-nginx-")
        if srv_tmp is None:  # srv's log, pid and status files, removed with the rest
            srv_tmp = os.path.join(self.tmp, "srv")
            os.mkdir(srv_tmp)
        self.sock_path = os.path.join(self.tmp, "srv.sock")
        self.access_log = os.path.join(self.tmp, "srv-access.log")
        args = ["--app", plugin("conformance"), "--access-logfile", self.access_log, *srv_args]
        if upstream == "unix":
            self.srv = start(args, bind=f"unix:{self.sock_path}", tmp=srv_tmp, workers=workers)
            deadline = time.time() + 30
            while not os.path.exists(self.sock_path):
                assert time.time() < deadline, f"srv never created {self.sock_path}:\n{self.srv.read_log()}"
                time.sleep(0.05)
            tcp_port = free_port()  # the TCP upstream exists in the file but is not used
        else:
            self.srv = start(args, tmp=srv_tmp, workers=workers)
            tcp_port = self.srv.port
        self.nginx = Nginx(self.tmp, self.sock_path, tcp_port, upstream, user=nginx_user)

    def access_lines(self):
        if not os.path.exists(self.access_log):
            return []
        with open(self.access_log, errors="replace") as f:
            return f.read().splitlines()

    def wait_access_lines(self, n, timeout=30):
        """Waits until srv's access log has at least n lines (a worker writes its line just
        after the response), then returns them all."""
        deadline = time.time() + timeout
        while len(self.access_lines()) < n and time.time() < deadline:
            time.sleep(0.05)
        return self.access_lines()

    def logs(self):
        return f"--- srv\n{self.srv.read_log()[-6000:]}\n{self.nginx.logs()}"

    def stop(self):
        self.nginx.stop()


@pytest.fixture
def stacks():
    """stack(upstream, srv_args=(), ...) starts srv behind nginx; all stop after the test."""
    start, stop_all = server_pool()
    made = []

    def stack(upstream, **kw):
        s = Stack(start, upstream, **kw)
        made.append(s)
        return s

    yield stack
    for s in made:
        s.stop()
    stop_all()
    for s in made:
        shutil.rmtree(s.tmp, ignore_errors=True)


@pytest.fixture(scope="module", params=["unix", "tcp"])
def stack(request):
    """One srv behind one nginx per upstream kind, shared by the tests of this module."""
    start, stop_all = server_pool()
    s = None
    try:
        s = Stack(start, request.param)
        yield s
    finally:
        if s:
            s.stop()
        stop_all()
        if s:
            shutil.rmtree(s.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The file itself
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("upstream", ["unix", "tcp"])
def test_site_conf_is_valid_without_warnings(upstream):
    """`nginx -t` accepts the site file and warns about nothing in it."""
    tmp = tempfile.mkdtemp(prefix="srv-nginx-t-")
    try:
        cert, key = make_cert(tmp)
        os.makedirs(os.path.join(tmp, "static"))
        site = render_site(os.path.join(tmp, "srv.sock"), free_port(), upstream, free_port(), free_port(),
                           cert, key, os.path.join(tmp, "static"))
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(main_conf(tmp, site))
        r = subprocess.run([NGINX, "-t", "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "error.log")],
                           capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert not re.search(r"\[(warn|emerg|alert|crit|error)\]", out), out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_site_conf_settings_match_srv_defaults():
    """The body limit is srv's default, and idle upstream connections are closed before
    srv's --keep-alive default (2 s) would close them under nginx."""
    with open(SITE) as f:
        text = f.read()
    active = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert re.search(r"^\s*client_max_body_size\s+64m;", active, re.M), "client_max_body_size is not 64m"
    timeouts = re.findall(r"^\s*keepalive_timeout\s+(\d+)s?;", active, re.M)
    assert timeouts and all(int(t) < 2 for t in timeouts), timeouts
    assert re.search(r"^\s*proxy_http_version\s+1\.1;", active, re.M)
    assert re.search(r'^\s*proxy_set_header\s+Connection\s+"";', active, re.M)
    assert not re.search(r"^\s*proxy_next_upstream\s+[^;]*non_idempotent", active, re.M)


# ---------------------------------------------------------------------------------------
# Through nginx, over both upstreams
# ---------------------------------------------------------------------------------------

def test_get_through_nginx(stack):
    r = fetch(stack.nginx.http_port, path="/")
    assert r.status == 200 and r.body.startswith(b"conformance "), f"{r}\n{stack.logs()}"
    env = environ_via(stack.nginx)
    assert env["REQUEST_METHOD"] == "GET" and env["PATH_INFO"] == "/environ", env
    # $host: the client's Host, lowercased, without a port.
    env = environ_via(stack.nginx, headers={"Host": f"Example.COM:{stack.nginx.http_port}"})
    assert header(env, "Host") == "example.com", env["headers"]
    # Keep-alive to srv: nginx does not pass the client's Connection header on.
    assert header(env, "Connection") is None, env["headers"]


def test_remote_addr_is_the_clients(stack):
    """REMOTE_ADDR is the address nginx saw (127.0.0.9), from X-Forwarded-For, which srv
    trusts from nginx by default; an address the client puts in X-Forwarded-For itself does
    not count (nginx appends, srv takes the last)."""
    env = environ_via(stack.nginx)
    assert env["REMOTE_ADDR"] == CLIENT_ADDR, f"{env}\n{stack.logs()}"
    env = environ_via(stack.nginx, headers={"X-Forwarded-For": "203.0.113.66"})
    assert header(env, "X-Forwarded-For") == f"203.0.113.66, {CLIENT_ADDR}", env["headers"]
    assert env["REMOTE_ADDR"] == CLIENT_ADDR, env


def test_remote_addr_over_tls(stack):
    env = environ_via(stack.nginx, tls=True)
    assert env["REMOTE_ADDR"] == CLIENT_ADDR, f"{env}\n{stack.logs()}"


def test_url_scheme_is_https_when_nginx_terminates_tls(stack):
    env = environ_via(stack.nginx, tls=True)
    assert header(env, "X-Forwarded-Proto") == "https", env["headers"]
    assert env["URL_SCHEME"] == "https", f"{env}\n{stack.logs()}"


def test_url_scheme_is_http_on_plain_http_whatever_the_client_says(stack):
    env = environ_via(stack.nginx, headers={"X-Forwarded-Proto": "https"})
    assert header(env, "X-Forwarded-Proto") == "http", env["headers"]
    assert env["URL_SCHEME"] == "http", env


def test_keep_alive_to_srv(stack):
    """50 requests, each on its own client connection: all 200, and srv logged each once
    (nothing lost, nothing retried twice)."""
    before = len(stack.access_lines())
    statuses = [fetch(stack.nginx.http_port, path=f"/status?code=200&i={i}").status for i in range(50)]
    assert statuses == [200] * 50, f"{statuses}\n{stack.logs()}"
    lines = stack.wait_access_lines(before + 50)
    new = lines[before:]
    assert len(new) == 50, f"{len(new)} new access log lines:\n" + "\n".join(new)
    for i in range(50):
        assert sum(f"/status?code=200&i={i} " in line for line in new) == 1, (i, new)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_post_1mib_is_echoed_exactly(stack, chunked):
    body = os.urandom(MiB)
    r = fetch(stack.nginx.http_port, "POST", "/echo", body=body, chunked=chunked,
              headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200, f"{r}\n{stack.logs()}"
    # nginx buffers the request (proxy_request_buffering) and sends it with a length,
    # even when the client sent it chunked.
    assert r.header("X-Input-Length") == str(MiB), r.headers
    assert len(r.body) == MiB and r.body == body


def test_large_response_is_buffered_whole(stack):
    """A 16 MiB response goes through nginx's buffers and temp file intact."""
    r = fetch(stack.nginx.http_port, path="/big?mb=16")
    assert r.status == 200, f"{r}\n{stack.logs()}"
    assert len(r.body) == 16 * MiB and r.body.count(b"x") == 16 * MiB


def test_static_files_never_reach_srv(stack):
    content = b"body { color: #123456; }\n"
    with open(os.path.join(stack.nginx.static_dir, "style.css"), "wb") as f:
        f.write(content)
    before = len(stack.access_lines())
    r = fetch(stack.nginx.http_port, path="/static/style.css")
    assert r.status == 200 and r.body == content, f"{r}\n{stack.logs()}"
    assert fetch(stack.nginx.http_port, path="/status?code=200&after-static").status == 200
    new = stack.wait_access_lines(before + 1)[before:]
    assert len(new) == 1 and "after-static" in new[0], new


def test_body_limit_is_srvs(stack):
    """nginx passes a body of exactly srv's limit, which srv takes, and refuses one byte
    more itself (413, srv never sees it)."""
    r = fetch(stack.nginx.http_port, "POST", "/read-past", body=b"b" * SRV_BODY_LIMIT)
    assert r.status == 200, f"{r}\n{stack.logs()}"
    assert r.body == b"read %d bytes, then 0 0 0\n" % SRV_BODY_LIMIT, r
    before = len(stack.access_lines())
    c = ClientConn(stack.nginx.http_port)
    try:
        c.send(f"POST /read-past HTTP/1.1\r\nHost: example.com\r\nContent-Length: {SRV_BODY_LIMIT + 1}\r\n\r\n")
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 413, r
    assert fetch(stack.nginx.http_port, path="/status?code=200&after-413").status == 200
    new = stack.wait_access_lines(before + 1)[before:]
    assert len(new) == 1 and "after-413" in new[0], new


def test_upstream_connections_are_reused(stacks):
    """Over TCP, with srv trusting no proxy (so REMOTE_PORT is nginx's own port): 50
    requests from 50 client connections reach srv on a handful of upstream connections."""
    s = stacks("tcp", srv_args=["--forwarded-allow-ips", "192.0.2.1"])
    ports = []
    for _ in range(50):
        env = environ_via(s.nginx)
        assert env["REMOTE_ADDR"] == "127.0.0.1", env
        ports.append(env["REMOTE_PORT"])
    assert len(set(ports)) < 10, f"{len(set(ports))} upstream connections for 50 requests: {sorted(set(ports))}"


# ---------------------------------------------------------------------------------------
# As deployed: srv as root handing its workers to a user, nginx's workers as nobody
# ---------------------------------------------------------------------------------------

@pytest.mark.root
def test_nginx_workers_as_nobody_reach_srvs_socket(stacks):
    """srv started by root with -u USER on a Unix socket, nginx started by root with
    `user nobody nogroup;`: nginx's workers (nobody) can connect, because srv makes the
    socket rwx for all by default (-m/--umask 0), like Gunicorn."""
    user = unprivileged_user()
    tmp = tempfile.mkdtemp(prefix="srv-nginx-root-")
    os.chmod(tmp, 0o755)  # nobody and USER may enter; nobody else may write
    srv_tmp = os.path.join(tmp, "srv")
    os.mkdir(srv_tmp)
    os.chmod(srv_tmp, 0o755)
    s = stacks("unix", srv_args=["-u", user], tmp=tmp, srv_tmp=srv_tmp, nginx_user="nobody nogroup")
    nobody = pwd.getpwnam("nobody").pw_uid
    workers = s.nginx.worker_pids()
    assert workers and all(uid_of(p) == nobody for p in workers), \
        f"nginx workers {workers} do not run as nobody: the test would prove nothing\n{s.logs()}"
    r = fetch(s.nginx.http_port, path="/")
    assert r.status == 200 and r.body.startswith(b"conformance "), f"{r}\n{s.logs()}"
    mode = stat.S_IMODE(os.stat(s.sock_path).st_mode)
    assert mode == 0o777, f"socket mode {oct(mode)}, expected 0o777 (-m/--umask default 0)"
    uid = pwd.getpwnam(user).pw_uid
    srv_workers = s.srv.worker_pids()
    assert srv_workers and all(uid_of(p) == uid for p in srv_workers), \
        f"srv workers {[(p, uid_of(p)) for p in srv_workers]} do not run as {user} ({uid})"
