"""The gateway spec's promises (PluginSDK/GATEWAY.md), each tested from its sentence,
against the real binary and the conformance plugin (issue 14)."""
import os
import re
import time

import pytest

from conftest import plugin, request


@pytest.fixture(scope="module")
def app(module_servers):
    return module_servers(["--app", plugin("conformance")])


@pytest.fixture(scope="module")
def threads1(module_servers):
    return module_servers(["--app", plugin("conformance"), "--threads", "1"])


@pytest.fixture(scope="module")
def threads2(module_servers):
    return module_servers(["--app", plugin("conformance"), "--threads", "2"])


def test_the_body_handed_to_the_application_is_zeroed(app):
    """"srv hands the application a zeroed srv_body (80 bytes in ABI 1.0) with size set"."""
    r = request(app.port, path="/body-zeroed")
    assert r.status == 200
    assert r.body.startswith(b"zeroed size=80 "), r.body


def test_an_empty_write_commits_nothing(app):
    """"write with len == 0 does nothing and returns SRV_OK": exc_info may still replace
    the response afterwards."""
    r = request(app.port, path="/error/empty-write-then-exc-info")
    assert r.status == 503, r
    assert r.body == b"replaced\n"


def test_a_second_start_response_before_anything_was_sent_is_a_500(app):
    """A broken rule before the response is committed makes it a 500, even when the app
    writes with the first call's write afterwards."""
    r = request(app.port, path="/error/twice-then-write")
    assert r.status == 500, r
    assert app.wait_log(r"broke rule 'start_response called twice'")


def test_multithread_is_set_only_when_another_thread_may_call(app, threads1, threads2):
    """"multithread: non-zero when another thread may call the application at the same
    time (... srv runs more than one application thread)"."""
    import json
    for server, expected in [(app, False), (threads1, False), (threads2, True)]:
        env = json.loads(request(server.port, path="/environ").body)
        assert env["multithread"] is expected, (server.proc.args, env["multithread"])


@pytest.mark.parametrize("path", ["/error/status-crlf", "/error/header-name-crlf"])
def test_what_an_app_puts_in_a_status_or_header_cannot_forge_log_lines(app, path):
    """srv's log line about the broken rule shows the app's bytes escaped: a CR LF in a
    status or a header name starts no line of its own."""
    mark = len(app.read_log())
    r = request(app.port, path=path)
    assert r.status == 500
    app.wait_log(r"broke rule", since=mark)
    new = app.read_log()[mark:]
    assert not any("forged" in line and "broke rule" not in line for line in new.splitlines()), new
    assert "\\r\\n" in new, new


def test_each_line_an_app_writes_to_errors_carries_the_app_prefix(app):
    mark = len(app.read_log())
    assert request(app.port, path="/errors-lines").status == 200
    app.wait_log(r"second line", since=mark)
    lines = [l for l in app.read_log()[mark:].splitlines() if "line" in l]
    assert len(lines) == 2 and all(re.search(r"\[ERROR\] app conformance: (first|second) line$", l) for l in lines), lines


def test_request_ids_are_unique_across_workers_and_in_the_logs(serve, tmp_path):
    """srv.request_id: "A unique identifier of this request, the one srv's logs use"."""
    import json
    access = tmp_path / "access.log"
    s = serve(["--app", plugin("conformance"), "--access-logfile", str(access)], workers=2)
    ids = [json.loads(request(s.port, path="/environ").body)["extensions"]["srv.request_id"] for _ in range(40)]
    assert len(set(ids)) == 40, ids
    mark = len(s.read_log())
    r = request(s.port, path="/error/twice")
    assert r.status == 500
    line = s.wait_log(r"broke rule 'start_response called twice' on GET /error/twice \(request (\S+)\)", since=mark)
    deadline = time.time() + 30
    while time.time() < deadline and line.group(1) not in access.read_text():
        time.sleep(0.1)
    assert line.group(1) in access.read_text(), "the access line of the request carries the id of its error line"
    for i in ids[:5]:
        assert i in access.read_text()


def test_a_trusted_proxys_request_id_is_the_request_id(serve):
    import json
    s = serve(["--app", plugin("conformance")])
    env = json.loads(request(s.port, path="/environ", headers={"X-Request-Id": "nginx-8f2a.1"}).body)
    assert env["extensions"]["srv.request_id"] == "nginx-8f2a.1"
    env = json.loads(request(s.port, path="/environ", headers={"X-Request-Id": "bad id;x"}).body)
    assert env["extensions"]["srv.request_id"] != "bad id;x"
    untrusting = serve(["--app", plugin("conformance"), "--forwarded-allow-ips", "10.0.0.1"])
    env = json.loads(request(untrusting.port, path="/environ", headers={"X-Request-Id": "forged"}).body)
    assert env["extensions"]["srv.request_id"] != "forged"


def test_a_file_body_whose_file_shrinks_is_aborted(serve, tmp_path):
    """A file body is `length` bytes of the file; when the file no longer has them srv
    cannot keep its promise of Content-Length: it aborts the connection, logs it and
    calls the body's close, instead of waiting for bytes that never come."""
    import socket
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (32 << 20))
    s = serve(["--app", plugin("conformance")])
    c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.sendall(f"GET /file?path={big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = c.recv(65536)
    assert got.startswith(b"HTTP/1.1 200")
    os.truncate(big, 1 << 20)
    total = len(got)
    deadline = time.time() + 30
    while time.time() < deadline:
        data = c.recv(1 << 20)
        if not data:
            break
        total += len(data)
    else:
        raise AssertionError("the connection was never closed")
    assert total < (32 << 20), total
    s.wait_log(r"shrank to 1048576 bytes", timeout=30)


def test_status_and_logs_name_apps_by_their_descriptor(serve):
    """srv status and the logs show each application's name and version from its
    descriptor, beside the snapshot's hash."""
    import json
    s = serve(["--app", plugin("conformance")])
    s.wait_log(r"generation 1 ready: 1 worker\(s\) serving /=conformance \S+ \([0-9a-f]{12}\)")
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(s.status_path) as f:
            app = json.load(f)["apps"][0]
        if app.get("name"):
            break
        time.sleep(0.2)
    assert app["name"] == "conformance" and app["version"], app
    assert len(app["hash"]) == 64


@pytest.mark.parametrize("name, args, reason", [("loadcrash", [], "crashed"), ("loadhang", ["--boot-timeout", "2"], "hung")])
def test_a_reload_that_crashes_or_hangs_names_the_reason(serve, tmp_path, name, args, reason):
    """The reason names `crashed` and `hung` of GATEWAY.md's loading steps appear in the
    log and in srv status, not only in srv check --json."""
    import json
    import shutil
    app = tmp_path / "libapp.so"
    shutil.copy(plugin("hello"), app)
    s = serve(["--app", str(app)] + args)
    shutil.copy(plugin(name), app)
    mark = len(s.read_log())
    s.signal(1)
    s.wait_log(rf"reload failed: .*\[{reason}\]", since=mark, timeout=40)
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(s.status_path) as f:
            err = json.load(f).get("lastReloadError") or ""
        if reason in err:
            break
        time.sleep(0.2)
    assert f"[{reason}]" in err, err
