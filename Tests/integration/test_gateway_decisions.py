"""The gateway spec's decisions on the points it used to leave open (PluginSDK/GATEWAY.md):
the commit point, SERVER_NAME, CONTENT_LENGTH, Transfer-Encoding in `headers`,
REMOTE_ADDR/REMOTE_PORT behind a proxy and on Unix sockets, the path (percent-decoding,
dot segments, mounts), a crashed request, read(buf, 0), HEAD, an empty reason phrase,
and an application that crashes while loading. Each test checks one sentence of
GATEWAY.md against the real binary over real sockets.

Most tests drive libconformance.so. The path, read(buf, 0), the reason phrase and the
HEAD shortcut need an application the conformance plugin does not have: `decisions`
below, compiled with cc into the test's temporary directory. It routes on QUERY_STRING,
so that every path reaches it, and by default answers with what srv put in environ.
"""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import ROOT, Conn, Server, free_port, plugin, request

DECISIONS_C = r"""
#include <srv/gateway.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

SRV_DESCRIPTOR("decisions", "1.0.0", 0, NULL, NULL);

static const srv_header text[] = {{{"Content-Type", 12}, {"text/plain", 10}}};

static int query_is(const srv_environ *e, const char *v) {
    return e->query_string.len == strlen(v) && memcmp(e->query_string.ptr, v, e->query_string.len) == 0;
}

/* Bytes outside printable ASCII, and '%', as %XX: a NUL in a string shows as %00. */
static char *put(char *p, const char *key, srv_str s) {
    size_t i;
    p += sprintf(p, "%s=", key);
    for (i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c < 0x21 || c > 0x7e || c == '%') p += sprintf(p, "%%%02X", c);
        else *p++ = (char)c;
    }
    *p++ = '\n';
    return p;
}

static int respond(srv_start_response_fn start_response, srv_body *body, const char *status, char *out, size_t len) {
    if (start_response(status, text, 1, NULL) == NULL) { free(out); return SRV_ERROR; }
    body->kind = SRV_BODY_BYTES;
    body->data = out;
    body->len = len;
    body->ctx = out;
    body->close = free;
    return SRV_OK;
}

int srv_gateway_app(const srv_environ *e, srv_start_response_fn start_response, srv_body *body) {
    char *out = malloc(4 * e->request_uri.len + 4096), *p = out;
    if (out == NULL) return SRV_ERROR;
    if (query_is(e, "read0")) {
        /* read(buf, 0) and read(NULL, 0) before the body, then the body 3 bytes at a time,
         * then read(buf, 0) at its end. */
        char buf[4], got[256];
        size_t n = 0;
        ssize_t r, before = e->input->read(buf, 0), null = e->input->read(NULL, 0);
        while (n + 3 < sizeof got && (r = e->input->read(got + n, 3)) > 0) n += (size_t)r;
        p += sprintf(p, "before=%zd null=%zd after=%zd body=", before, null, e->input->read(buf, 0));
        memcpy(p, got, n);
        p += n;
        return respond(start_response, body, "200 OK", out, (size_t)(p - out));
    }
    if (query_is(e, "empty-reason") || query_is(e, "no-reason")) {
        p += sprintf(p, "reason\n");
        return respond(start_response, body, query_is(e, "empty-reason") ? "200 " : "200", out, (size_t)(p - out));
    }
    if (query_is(e, "head-shortcut")) {
        /* The headers GET has; for HEAD, no body at all. */
        static const srv_header h[] = {{{"Content-Type", 12}, {"text/plain", 10}},
                                       {{"Content-Length", 14}, {"6", 1}}};
        free(out);
        if (start_response("200 OK", h, 2, NULL) == NULL) return SRV_ERROR;
        if (e->request_method.len == 4 && memcmp(e->request_method.ptr, "HEAD", 4) == 0) return SRV_OK;
        body->kind = SRV_BODY_BYTES;
        body->data = "hello\n";
        body->len = 6;
        return SRV_OK;
    }
    p = put(p, "SCRIPT_NAME", e->script_name);
    p = put(p, "PATH_INFO", e->path_info);
    p = put(p, "REQUEST_URI", e->request_uri);
    return respond(start_response, body, "200 OK", out, (size_t)(p - out));
}
"""


@pytest.fixture(scope="module")
def decisions_so(tmp_path_factory):
    """libdecisions.so, and the same code as libother.so (a second mount)."""
    d = tmp_path_factory.mktemp("decisions")
    src = d / "decisions.c"
    src.write_text(DECISIONS_C)
    so = d / "libdecisions.so"
    cc = subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-O2", "-shared", "-fPIC", "-fvisibility=hidden",
                         "-I", os.path.join(ROOT, "PluginSDK", "C", "include"), "-o", str(so), str(src)],
                        capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    other = d / "libother.so"
    shutil.copy(so, other)
    return str(so), str(other)


@pytest.fixture(scope="module")
def app(module_servers):
    return module_servers(["--app", plugin("conformance")])


@pytest.fixture(scope="module")
def paths(module_servers, decisions_so):
    """decisions at /app and at /other."""
    so, other = decisions_so
    return module_servers(["--mount", f"/app={so}", "--mount", f"/other={other}"])


@pytest.fixture(scope="module")
def mixed(module_servers, decisions_so):
    """decisions at /d, conformance at /c."""
    return module_servers(["--mount", f"/d={decisions_so[0]}", "--mount", f"/c={plugin('conformance')}"])


def exchange(data, port=None, unix=None, family=socket.AF_INET, host="127.0.0.1", timeout=10):
    """Sends `data` on a fresh connection and returns every byte srv sends until it closes
    (a reset counts as a close)."""
    s = socket.socket(socket.AF_UNIX if unix else family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(unix if unix else (host, port))
        s.sendall(data.encode("latin-1") if isinstance(data, str) else data)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


def environ_json(port=None, head="GET /environ HTTP/1.1\r\nHost: 127.0.0.1\r\n", body=b"", unix=None,
                 family=socket.AF_INET, host="127.0.0.1", prefix=b""):
    """The conformance app's /environ for a request whose head (without the final empty
    line and Connection: close) is `head`."""
    got = exchange(prefix + (head + "Connection: close\r\n\r\n").encode("latin-1") + body, port=port, unix=unix,
                   family=family, host=host)
    status, _, rest = got.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 200"), got
    return json.loads(rest.split(b"\r\n\r\n", 1)[1])


def unescape(value):
    """The decisions app's %XX back to bytes."""
    out, i = b"", 0
    while i < len(value):
        if value[i] == "%":
            out += bytes([int(value[i + 1:i + 3], 16)])
            i += 3
        else:
            out += value[i].encode()
            i += 1
    return out


def decisions_environ(port, target):
    """(status, {key: bytes}) of the decisions app's answer to GET `target`."""
    r = request(port, path=target)
    if r.status != 200:
        return r.status, None
    lines = r.body.decode().splitlines()
    return 200, {k: unescape(v) for k, v in (line.split("=", 1) for line in lines)}


def wait_exit(server, timeout=60):
    deadline = time.time() + timeout
    while server.proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    return server.proc.poll()


# ---------------------------------------------------------------------------------------
# The commit point
# ---------------------------------------------------------------------------------------

def test_a_rule_broken_after_the_first_nonempty_write_aborts_the_connection(app):
    """"The response is committed by the first call of write with len > 0": after it,
    exc_info cannot replace the status; srv sends what it has and closes the connection
    (the client sees a 200 cut short, not a 500)."""
    mark = len(app.read_log())
    got = exchange("GET /error/after-body HTTP/1.1\r\nHost: x\r\n\r\n", port=app.port)
    assert got.startswith(b"HTTP/1.1 200 "), got
    assert b"partial" in got and not got.endswith(b"0\r\n\r\n"), got
    app.wait_log(r"broke rule 'start_response after body started'.*connection aborted", since=mark)


def test_a_rule_broken_before_the_commit_is_a_500(app):
    """Until srv has accepted what srv_gateway_app returned, nothing is committed: a bytes
    body shorter than the app's Content-Length makes the response a 500."""
    r = request(app.port, path="/error/content-length")
    assert r.status == 500, r


# ---------------------------------------------------------------------------------------
# SERVER_NAME
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, expected", [("Example.ORG:8080", "Example.ORG"), ("example.org", "example.org"),
                                            ("[::1]:99", "[::1]"), ("192.0.2.7:81", "192.0.2.7")])
def test_server_name_is_the_host_header_without_its_port(app, host, expected):
    """"SERVER_NAME: the host of the Host header, as sent, without its port"; srv does
    not read X-Forwarded-Host."""
    env = environ_json(app.port, f"GET /environ HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Host: forged.example\r\n")
    assert env["SERVER_NAME"] == expected, env
    assert env["SERVER_PORT"] == str(app.port), env


def test_server_name_of_an_absolute_form_target_is_its_authority(app):
    """"an absolute-form target's authority replaces Host (RFC 9112 §3.2.2)"."""
    env = environ_json(app.port, "GET http://other.example:81/environ HTTP/1.1\r\nHost: example.org\r\n")
    assert env["SERVER_NAME"] == "other.example", env
    assert env["PATH_INFO"] == "/environ", env


def test_server_name_without_a_host_is_the_listeners_address(app):
    """"without either (HTTP/1.0 without Host), the listener's address, or localhost on a
    Unix socket"."""
    env = environ_json(app.port, "GET /environ HTTP/1.0\r\n")
    assert env["SERVER_NAME"] == "127.0.0.1", env


def test_server_name_of_an_ipv6_listener_is_in_brackets(serve):
    """"an IPv6 address in brackets" for the listener's address too, as in Host."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("IPv6 loopback not available")
    server = serve(["--app", plugin("conformance")], bind=f"[::1]:{port}", port=port, wait=False)
    server.wait_log(r"generation 1 ready", timeout=30)
    env = environ_json(port, "GET /environ HTTP/1.0\r\n", family=socket.AF_INET6, host="::1")
    assert env["SERVER_NAME"] == "[::1]", env


# ---------------------------------------------------------------------------------------
# CONTENT_LENGTH and Transfer-Encoding
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("framing, body, expected", [
    ("", b"", ""),
    ("Content-Length: 5\r\n", b"hello", "5"),
    ("Transfer-Encoding: chunked\r\n", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", "5"),
    ("Content-Length: 0\r\n", b"", "0"),
    ("Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", "0"),
], ids=["no-body", "content-length", "chunked", "content-length-0", "chunked-empty"])
def test_content_length_is_the_decoded_length_of_a_body_the_request_has(app, framing, body, expected):
    """"CONTENT_LENGTH: the decimal length of the body after srv removed the chunked
    coding, "0" for an empty one; "" only when the request has neither Content-Length nor
    Transfer-Encoding"."""
    env = environ_json(app.port, f"POST /environ HTTP/1.1\r\nHost: x\r\n{framing}", body=body)
    assert env["CONTENT_LENGTH"] == expected, env
    assert env["input_length"] == int(expected or 0), env


def test_transfer_encoding_is_not_in_headers(app):
    """headers: "Two kinds of field are left out: Transfer-Encoding, because srv has
    removed the chunked coding (the body input gives is content_length bytes, not
    chunked)"."""
    env = environ_json(app.port, "POST /environ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n",
                       body=b"5\r\nhello\r\n0\r\n\r\n")
    names = [name.lower() for name, _ in env["headers"]]
    assert "transfer-encoding" not in names, env["headers"]
    assert "x-kept" in names and env["CONTENT_LENGTH"] == "5", env


def test_header_names_with_an_underscore_are_left_out(app):
    """headers: "... and any field whose name contains _"."""
    env = environ_json(app.port, "GET /environ HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\nX-Dash: 2\r\n")
    names = [name for name, _ in env["headers"]]
    assert "X_Under" not in names and "X-Dash" in names, names


# ---------------------------------------------------------------------------------------
# REMOTE_ADDR and REMOTE_PORT
# ---------------------------------------------------------------------------------------

def test_remote_port_is_the_tcp_peers_port(app):
    s = socket.create_connection(("127.0.0.1", app.port), timeout=10)
    try:
        port = s.getsockname()[1]
        s.sendall(b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    env = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == str(port), env


def test_behind_a_trusted_proxy_remote_port_is_empty(app):
    """"REMOTE_PORT: "" when REMOTE_ADDR comes from X-Forwarded-For (which carries no
    port)": never the proxy's own port beside its client's address."""
    env = environ_json(app.port, "GET /environ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1, 203.0.113.9\r\n")
    assert env["REMOTE_ADDR"] == "203.0.113.9" and env["REMOTE_PORT"] == "", env


def test_an_untrusted_peers_forwarded_for_changes_nothing(serve):
    s = serve(["--app", plugin("conformance"), "--forwarded-allow-ips", "10.0.0.1"])
    env = environ_json(s.port, "GET /environ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n")
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"].isdigit(), env


def test_behind_the_proxy_protocol_remote_port_is_the_clients(serve):
    """"the client's port when a PROXY protocol header names it"."""
    s = serve(["--app", plugin("conformance"), "--proxy-protocol"])
    env = environ_json(s.port, prefix=b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 443\r\n")
    assert env["REMOTE_ADDR"] == "203.0.113.5" and env["REMOTE_PORT"] == "56324", env


def test_on_a_unix_socket_the_addresses_and_ports_are_empty(serve):
    """On a Unix socket: REMOTE_ADDR "" (unless a trusted proxy names its client),
    REMOTE_PORT "", SERVER_PORT "", SERVER_NAME "localhost" without Host."""
    path = f"/tmp/srv-test-{os.getpid()}-{free_port()}.sock"
    try:
        serve(["--app", plugin("conformance")], bind=f"unix:{path}")
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.05)
        env = environ_json(unix=path)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["SERVER_PORT"]) == ("", "", ""), env
        assert env["SERVER_NAME"] == "127.0.0.1", env  # the Host header
        env = environ_json(unix=path, head="GET /environ HTTP/1.0\r\n")
        assert env["SERVER_NAME"] == "localhost", env
        env = environ_json(unix=path, head="GET /environ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n")
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.7", ""), env
    finally:
        if os.path.exists(path):
            os.unlink(path)


# ---------------------------------------------------------------------------------------
# The path: percent-decoding, dot segments, mounts
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, script_name, path_info", [
    ("/app/x%2Fy", b"/app", b"/x/y"),              # %2F is a slash like any other
    ("/app%2Fx", b"/app", b"/x"),                  # mounts match after decoding
    ("/%61pp/x", b"/app", b"/x"),                  # SCRIPT_NAME is the mount as configured
    ("/app/%2541", b"/app", b"/%41"),              # decoded once
    ("/app/%C3%A9%FF", b"/app", b"/\xc3\xa9\xff"),  # bytes, not text
    ("/app//x", b"/app", b"//x"),                  # empty segments are kept
    ("/app/./x", b"/app", b"/x"),
    ("/app/x/../y", b"/app", b"/y"),
    ("/app/x/%2e%2E/y", b"/app", b"/y"),           # after decoding, %2E is a dot
    ("/app/x/.", b"/app", b"/x/"),
    ("/app/x/..", b"/app", b"/"),
    ("/app/../other/x", b"/other", b"/x"),         # mounts match after dot segments
    ("/other/x%2F..%2F..%2Fapp/y", b"/app", b"/y"),
])
def test_path_info_is_decoded_and_resolved_before_mounts_match(paths, target, script_name, path_info):
    """The path: decoded once (%2F a slash like any other), dot segments resolved, then
    mounts matched; "script_name + path_info is the decoded, resolved path"; request_uri
    stays raw."""
    status, env = decisions_environ(paths.port, target)
    assert status == 200, (target, status)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script_name, path_info), (target, env)
    assert env["REQUEST_URI"] == target.encode(), env


@pytest.mark.parametrize("target", ["/app/x%00.txt", "/app/%00", "/app/%zz", "/app/%4", "/app/%", "/app/%%41",
                                    "/../app/x", "/app/../../app/x", "/app/%2e%2e/%2e%2e/app/x"])
def test_a_nul_an_invalid_escape_or_a_climb_above_the_root_is_a_400(paths, target):
    """"A % not followed by two hexadecimal digits, and %00 ..., make the request 400 Bad
    Request"; "A .. with no segment before it (one that would climb above /) makes the
    request a 400"."""
    r = request(paths.port, path=target)
    assert r.status == 400, (target, r)


def test_mounts_match_whole_segments(paths):
    r = request(paths.port, path="/apple")
    assert r.status == 404 and r.body == b"Not Found\n", r


# ---------------------------------------------------------------------------------------
# A crashed request
# ---------------------------------------------------------------------------------------

def test_the_client_of_a_crashed_request_gets_no_response(serve):
    """"its client receives no response: the connection closes (EOF or a reset) without a
    byte of the response when nothing had been written"; "srv does not retry the
    request"; the master starts a new worker."""
    s = serve(["--app", plugin("conformance")])
    mark = len(s.read_log())
    assert exchange("GET /crash HTTP/1.1\r\nHost: x\r\n\r\n", port=s.port) == b""
    # GATEWAY.md: the request id is on every line about a request, this one included.
    s.wait_log(r'died with signal SIGSEGV while serving "GET /crash" \(request [0-9a-f]{12}-\d+\)', since=mark)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if request(s.port, path="/counter").status == 200:
                break
        except (OSError, EOFError):
            time.sleep(0.1)
    else:
        raise AssertionError("no worker answered after the crash")
    assert s.read_log()[mark:].count("GET /crash") == 1, "srv ran the crashed request once, without retrying it"


def test_responses_finished_before_a_crash_on_the_same_connection_are_sent(serve):
    """"Responses the worker finished earlier on the same connection have been sent",
    pipelined ones included."""
    s = serve(["--app", plugin("conformance")])
    got = exchange("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /crash HTTP/1.1\r\nHost: x\r\n\r\n", port=s.port)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nconformance 1.0.0\n"), got


# ---------------------------------------------------------------------------------------
# read(buf, 0)
# ---------------------------------------------------------------------------------------

def test_a_read_of_zero_bytes_returns_0_and_is_not_the_end(mixed):
    """"read(buf, 0) returns 0 at once and copies nothing (buf may be NULL); it is not
    the end of the body"."""
    r = request(mixed.port, method="POST", path="/d/?read0", body=b"hello world")
    assert r.status == 200 and r.body == b"before=0 null=0 after=0 body=hello world", r


# ---------------------------------------------------------------------------------------
# HEAD
# ---------------------------------------------------------------------------------------

def test_head_sends_the_headers_of_get_and_no_body(mixed):
    """"srv answers HEAD with the status and headers GET would have, Content-Length or
    Transfer-Encoding included, and never a body byte": the next response on the
    connection starts right after the head."""
    c = Conn(mixed.port)
    try:
        for path in ["/c/", "/c/write", "/c/iter", "/c/file?path=" + os.path.join(ROOT, "LICENSE")]:
            c.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
            get = c.read_response()
            c.send(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n")
            head = c.read_response(head=True)
            assert head.status == get.status == 200, (path, head)
            for name in ("Content-Length", "Transfer-Encoding", "Content-Type"):
                assert head.header(name) == get.header(name), (path, name, head, get)
            c.send("GET /c/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().body == b"conformance 1.0.0\n", path
    finally:
        c.close()


def test_head_does_not_pull_an_iterator(mixed):
    """"srv calls the body's close without pulling an iterator" (so an endless one costs
    nothing)."""
    c = Conn(mixed.port)
    try:
        c.send("GET /c/closes HTTP/1.1\r\nHost: x\r\n\r\n")
        before = c.read_response().body.split()
        c.send(f"HEAD /c/big?mb={1 << 30} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response(head=True).status == 200
        c.send("GET /c/closes HTTP/1.1\r\nHost: x\r\n\r\n")
        after = c.read_response().body.split()
    finally:
        c.close()
    assert int(after[1]) == int(before[1]) + 2 and int(after[3]) == int(before[3]) + 2, (before, after)


def test_head_may_skip_the_body(mixed):
    """"For HEAD the application MAY skip the body and still send the Content-Length GET
    would have: srv does not check it against an empty body"."""
    c = Conn(mixed.port)
    try:
        c.send("HEAD /d/?head-shortcut HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response(head=True)
        assert r.status == 200 and r.header("Content-Length") == "6", r
        c.send("GET /d/?head-shortcut HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello\n", r
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# The reason phrase
# ---------------------------------------------------------------------------------------

def test_an_empty_reason_phrase_is_sent_as_is(mixed):
    """""200 " (an empty reason after the space) is valid; the status line keeps the
    space (RFC 9112 §4)."""
    got = exchange("GET /d/?empty-reason HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", port=mixed.port)
    assert got.startswith(b"HTTP/1.1 200 \r\n"), got
    assert got.endswith(b"\r\n\r\nreason\n"), got


def test_a_status_without_the_space_is_invalid(mixed):
    mark = len(mixed.read_log())
    r = request(mixed.port, path="/d/?no-reason")
    assert r.status == 500, r
    mixed.wait_log(r"broke rule 'invalid status", since=mark)


# ---------------------------------------------------------------------------------------
# An application that crashes while loading
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("how, name, reason, signal", [
    ("app", "loadcrash", "crashed", "SIGSEGV"),
    ("mount", "loadcrash", "crashed", "SIGSEGV"),
    ("app", "loadhang", "hung", ""),
])
def test_an_app_refused_at_startup_stops_the_master(how, name, reason, signal):
    """"At startup, an application named with --app, --mount or the configuration file
    that srv refuses, for any reason (crashed and hung included), stops srv: before it
    reports ready, the master logs a CRITICAL line that names the file and the reason
    name ..., stops its workers, and exits with status 1"."""
    bad = plugin(name)
    args = ["--app", bad] if how == "app" else ["--mount", f"/good={plugin('conformance')}", "--mount", f"/bad={bad}"]
    s = Server(args + ["--boot-timeout", "3"], wait=False)
    try:
        rc = wait_exit(s)
        log = s.read_log()
        assert rc == 1, f"srv exited with {rc}:\n{log}"
        critical = [line for line in log.splitlines() if "[CRITICAL]" in line]
        assert any(bad in line and f"[{reason}]" in line and signal in line for line in critical), log
        assert "ready" not in log, log
    finally:
        s.stop()
        s.remove_tmp()


def test_with_apps_dir_an_app_that_crashes_while_loading_leaves_the_others_serving(serve, tmp_path):
    """"An application found by --apps-dir that srv refuses is logged and not mounted; the
    others are served"."""
    d = tmp_path / "apps"
    d.mkdir()
    for name in ("conformance", "loadcrash"):
        shutil.copy(plugin(name), d / f"lib{name}.so")
    s = serve(["--apps-dir", str(d)])
    s.wait_log(r"libloadcrash\.so: .*SIGSEGV.*\(not mounted\)", timeout=30)
    assert request(s.port, path="/conformance/").body == b"conformance 1.0.0\n"
    assert request(s.port, path="/loadcrash/").status == 404
    assert s.proc.poll() is None


def test_a_request_that_crashes_a_booting_worker_does_not_stop_the_master():
    """"Only loading counts: a worker that crashes while serving a request, even one that
    arrived before srv reported ready, never stops srv; the master replaces it." Requests
    queued on the listener before the first worker exists are served the moment it
    starts, before its READY reaches the master."""
    s = Server(["--app", plugin("conformance")], wait=False)
    try:
        s.wait_log(r"listening at", timeout=30)
        queued = []
        for _ in range(10):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            c.sendall(b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
            queued.append(c)
        for c in queued:
            try:
                assert c.recv(65536) == b""
            except ConnectionResetError:
                pass
            c.close()
        deadline = time.time() + 60
        while time.time() < deadline and s.proc.poll() is None:
            try:
                if request(s.port, path="/").status == 200:
                    break
            except (OSError, EOFError):
                time.sleep(0.1)
        assert s.proc.poll() is None, f"srv exited with {s.proc.returncode}:\n{s.read_log()}"
        assert request(s.port, path="/").status == 200
        assert "failed to boot" not in s.read_log(), s.read_log()
    finally:
        s.stop()
        s.remove_tmp()
