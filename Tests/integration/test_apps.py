"""Many applications in one server: --apps-dir, --mount, prefix routing (SCRIPT_NAME /
PATH_INFO), HUP re-scans that mount, unmount and reload applications one by one, broken
applications that do not take the others down, --reload watching the directory with
inotify, and each mount running its own load hook.

conformance's /environ answers the environ as JSON; "/" answers "conformance VERSION";
/loaded tells what its load hook saw (pid, mount). libconformance.so is 1.0.0,
libconformance2.so 2.0.0; hello answers "Hello, World!" to everything.
"""
import json
import os
import re
import shutil
import signal
import tempfile
import time

import pytest

from conftest import Conn, plugin, read_status, request, status, wait_until

HELLO = b"Hello, World!\n"
CONF1 = b"conformance 1.0.0\n"
CONF2 = b"conformance 2.0.0\n"


# --- helpers ------------------------------------------------------------------------------

def apps_dir(base, **apps):
    """A fresh directory under `base` (the test's tmp_path, which pytest removes) with
    DIR/<file> copied from plugin(<name>) for each file=name; file names are given without
    '.so' ("libalpha" -> libalpha.so)."""
    d = tempfile.mkdtemp(prefix="apps-", dir=base)
    for file, name in apps.items():
        shutil.copyfile(plugin(name), os.path.join(d, f"{file}.so"))
    return d


def put(d, file, name):
    """Copies plugin(name) over DIR/<file>.so (in place, as `cp` would)."""
    shutil.copyfile(plugin(name), os.path.join(d, f"{file}.so"))


def get(port, path):
    return request(port, "GET", path)


def body(port, path):
    r = get(port, path)
    return r.status, r.body


def environ(port, path):
    r = get(port, path)
    assert r.status == 200, (path, r)
    return json.loads(r.body)




def status_at(server, generation, timeout=20):
    """The JSON status once the master reports `generation` as current (it writes the
    file twice a second)."""
    deadline = time.time() + timeout
    while True:
        st = status(server)
        if st["generation"] == generation and st.get("pendingGeneration") is None:
            return st
        if time.time() > deadline:
            raise AssertionError(f"status never reached generation {generation}: {st}")
        time.sleep(0.1)


def hashes(st):
    return {a["mount"]: a["hash"] for a in st["apps"]}


def hup(server, generation, timeout=30):
    """Sends HUP and waits for `generation N ready`; returns the log written since."""
    since = len(server.read_log())
    server.signal(signal.SIGHUP)
    server.wait_log(rf"generation {generation} ready", timeout=timeout, since=since)
    return server.read_log()[since:]


def assert_plain_404(r):
    assert r.status == 404, r
    assert r.body.strip() == b"Not Found", r
    assert r.header("Content-Type").startswith("text/plain"), r


# --- mounting -----------------------------------------------------------------------------

def test_apps_dir_mounts_every_file_at_its_name(serve, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance", libbeta="hello", gamma="conformance2")
    with open(os.path.join(d, "README.txt"), "w") as f:
        f.write("not an application\n")
    s = serve(["--apps-dir", d], workers=2)

    env = environ(s.port, "/alpha/environ?x=1")
    assert env["SCRIPT_NAME"] == "/alpha"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "x=1"
    assert env["REQUEST_URI"] == "/alpha/environ?x=1"

    assert body(s.port, "/alpha/") == (200, CONF1)
    assert body(s.port, "/alpha") == (200, CONF1)  # PATH_INFO "" answers like "/"
    assert body(s.port, "/alpha?q=2") == (200, CONF1)
    assert body(s.port, "/alpha/environ/") == (404, b"not found\n")  # PATH_INFO "/environ/" as sent
    env = environ(s.port, "/gamma/environ")  # <name>.so mounts too
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/gamma", "/environ")
    assert body(s.port, "/gamma/") == (200, CONF2)
    assert body(s.port, "/beta/anything/below") == (200, HELLO)

    st = status_at(s, 1)
    assert {a["mount"]: a["path"] for a in st["apps"]} == {
        "/alpha": os.path.join(d, "libalpha.so"), "/beta": os.path.join(d, "libbeta.so"),
        "/gamma": os.path.join(d, "gamma.so")}
    assert st["appErrors"] == []

    # `srv status`: one line per application, with its file and short hash.
    text = status(s, as_json=False)
    app_lines = [line for line in text.splitlines() if line.strip().startswith("app ")]
    assert len(app_lines) == 3, text
    for a in st["apps"]:
        assert any(a["mount"] in line and a["path"] in line and a["hash"][:12] in line
                   for line in app_lines), (a, text)


def test_unknown_paths_get_a_plain_404_that_reveals_nothing(serve, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance", libsecretapp="hello")
    s = serve(["--apps-dir", d])
    for path in ["/", "/nope", "/alph", "/alphabet", "/alpha.so", "/libalpha", "/secret",
                 "/nope/alpha/environ", "/%61lpha-x"]:
        r = get(s.port, path)
        assert_plain_404(r)
        assert b"alpha" not in r.body and b"secretapp" not in r.body
        assert not any("alpha" in v or "secretapp" in v for _, v in r.headers), r.headers
    # mounts match whole segments only
    assert body(s.port, "/alpha/x")[1] == b"not found\n"  # conformance's own 404


def test_explicit_mounts_longest_prefix_wins(serve):
    s = serve(["--mount", f"/={plugin('hello')}",
               "--mount", f"/api={plugin('conformance')}",
               "--mount", f"/api/v2={plugin('conformance2')}"])
    env = environ(s.port, "/api/environ")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/api", "/environ")
    env = environ(s.port, "/api/v2/environ")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/api/v2", "/environ")
    assert body(s.port, "/api") == (200, CONF1)
    assert body(s.port, "/api/") == (200, CONF1)
    assert body(s.port, "/api/v2/") == (200, CONF2)
    # whole segments: /apiary and /api/v2x are not under /api and /api/v2
    assert body(s.port, "/apiary") == (200, HELLO)
    assert body(s.port, "/api/v2x") == (404, b"not found\n")  # conformance 1 at /api, PATH_INFO /v2x
    assert body(s.port, "/") == (200, HELLO)
    assert body(s.port, "/anything/else") == (200, HELLO)
    mounts = {a["mount"] for a in status_at(s, 1)["apps"]}
    assert mounts == {"/", "/api", "/api/v2"}


def test_app_at_root_next_to_an_apps_dir(serve, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance")
    s = serve(["--app", plugin("conformance2"), "--apps-dir", d])
    env = environ(s.port, "/alpha/environ")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/alpha", "/environ")
    env = environ(s.port, "/environ")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/environ")
    assert body(s.port, "/") == (200, CONF2)
    assert body(s.port, "/alpha/") == (200, CONF1)
    assert body(s.port, "/alphabet") == (404, b"not found\n")  # the root app's 404


# --- HUP re-scans the directory -----------------------------------------------------------

def test_hup_mounts_new_unmounts_removed_reloads_changed_keeps_unchanged(serve, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance", libbeta="conformance", libdelta="conformance")
    s = serve(["--apps-dir", d], workers=2)
    before = hashes(status_at(s, 1))
    assert set(before) == {"/alpha", "/beta", "/delta"}
    assert body(s.port, "/alpha/") == (200, CONF1)
    delta_hash = environ(s.port, "/delta/environ")["extensions"]["srv.app_hash"]
    assert delta_hash == before["/delta"]

    put(d, "libalpha", "conformance2")           # changed
    os.unlink(os.path.join(d, "libbeta.so"))      # removed
    put(d, "libgamma", "hello")                   # new
    hup(s, 2)

    assert body(s.port, "/alpha/") == (200, CONF2)
    assert_plain_404(get(s.port, "/beta/"))
    assert_plain_404(get(s.port, "/beta/environ"))
    assert body(s.port, "/gamma/") == (200, HELLO)
    assert body(s.port, "/delta/") == (200, CONF1)
    env = environ(s.port, "/delta/environ")
    assert env["extensions"]["srv.generation"] == "2"
    assert env["extensions"]["srv.app_hash"] == delta_hash

    after = hashes(status_at(s, 2))
    assert set(after) == {"/alpha", "/delta", "/gamma"}
    assert after["/delta"] == before["/delta"], "an untouched application keeps its snapshot"
    assert after["/alpha"] != before["/alpha"]


def test_empty_apps_dir_then_an_app_appears(serve, tmp_path):
    d = apps_dir(tmp_path)
    s = serve(["--apps-dir", d])
    assert_plain_404(get(s.port, "/alpha/"))
    put(d, "libalpha", "conformance")
    hup(s, 2)
    assert body(s.port, "/alpha/") == (200, CONF1)


@pytest.mark.parametrize("broken", ["badmagic", "undefined", "loadfail"])
def test_a_broken_new_app_does_not_block_the_others(serve, broken, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance", libbeta="hello")
    s = serve(["--apps-dir", d], workers=2)
    put(d, "libbroken", broken)
    put(d, "libbeta", "conformance2")  # updated in the same reload
    log = hup(s, 2)

    assert body(s.port, "/alpha/") == (200, CONF1)
    assert body(s.port, "/beta/") == (200, CONF2)
    assert_plain_404(get(s.port, "/broken/"))
    assert_plain_404(get(s.port, "/broken"))

    why = [line for line in log.splitlines() if "/broken" in line]
    assert why, log
    assert all("ERROR" in line or "not mounted" in line for line in why), why
    expected = {"badmagic": "magic", "undefined": "undefined", "loadfail": "/nonexistent/blog.db"}[broken]
    assert any(expected in line.lower() or expected in line for line in why), why

    st = status_at(s, 2)
    assert set(hashes(st)) == {"/alpha", "/beta"}
    assert [e["mount"] for e in st["appErrors"]] == ["/broken"], st
    assert expected in st["appErrors"][0]["error"].lower() or expected in st["appErrors"][0]["error"]
    text = status(s, as_json=False)
    line = [l for l in text.splitlines() if "/broken" in l]
    assert len(line) == 1 and "NOT LOADED" in line[0], text

    # once it is removed, the next reload forgets the error
    os.unlink(os.path.join(d, "libbroken.so"))
    hup(s, 3)
    assert status_at(s, 3)["appErrors"] == []
    assert body(s.port, "/beta/") == (200, CONF2)


def test_broken_app_named_in_log_with_magic(serve, tmp_path):
    """The brief's wording: the log says why, mentioning "broken" and "magic"."""
    d = apps_dir(tmp_path, libalpha="conformance")
    s = serve(["--apps-dir", d])
    put(d, "libbroken", "badmagic")
    log = hup(s, 2)
    assert re.search(r"broken.*magic", log), log


def test_broken_apps_at_startup_do_not_stop_the_others(serve, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance", libbroken="badmagic", libctor="ctorcrash",
                 liblcrash="loadcrash", libhang="loadhang", libund="undefined")
    s = serve(["--apps-dir", d, "--boot-timeout", "1.5"], workers=2)
    assert body(s.port, "/alpha/") == (200, CONF1)
    for name in ["broken", "ctor", "lcrash", "hang", "und"]:
        assert_plain_404(get(s.port, f"/{name}/"))
    st = status_at(s, 1)
    assert set(hashes(st)) == {"/alpha"}
    errors = {e["mount"]: e["error"] for e in st["appErrors"]}
    assert set(errors) == {"/broken", "/ctor", "/lcrash", "/hang", "/und"}, errors
    assert "magic" in errors["/broken"]
    assert "crashed" in errors["/ctor"] and "crashed" in errors["/lcrash"]
    assert "did not finish loading" in errors["/hang"]
    assert "undefined symbol" in errors["/und"]
    log = s.read_log()
    for mount in errors:
        assert re.search(rf"ERROR\] app {mount}: .*not mounted", log), (mount, log)


def test_each_app_runs_its_unload_hook_when_its_workers_retire(serve, tmp_path):
    unload_file = str(tmp_path / "unloads")
    d = apps_dir(tmp_path, libalpha="conformance", libbeta="conformance")
    s = serve(["--apps-dir", d], workers=2, env={"SRV_CONFORMANCE_UNLOAD_FILE": unload_file})
    old = s.worker_pids()
    os.unlink(os.path.join(d, "libbeta.so"))
    hup(s, 2)
    wait_until(lambda: not set(old) & set(s.worker_pids()), timeout=30,
               message=lambda: f"the retired workers {old} to exit (have {s.worker_pids()})")
    with open(unload_file) as f:
        lines = sorted(f.read().split("\n")[:-1])
    # alpha and beta in each of the two retired workers
    assert lines == sorted(f"unload {pid}" for pid in old for _ in range(2)), lines


def test_a_request_in_flight_to_a_removed_app_completes(serve, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance", libbeta="hello")
    s = serve(["--apps-dir", d], workers=1)
    c = Conn(s.port, timeout=60)
    try:
        # Long enough to outlast the reload below even on a loaded machine; the HUP waits
        # until the status shows the request in a worker (not a fixed sleep).
        c.send("GET /alpha/sleep?ms=4000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_until(lambda: any((w.get("currentRequest") or "").startswith("GET /alpha/sleep")
                               for w in (read_status(s) or {}).get("workers", [])),
                   timeout=30, message=lambda: f"the request in flight in the status: {read_status(s)}")
        os.unlink(os.path.join(d, "libalpha.so"))
        hup(s, 2)
        assert_plain_404(get(s.port, "/alpha/"))
        assert body(s.port, "/beta/") == (200, HELLO)
        r = c.read_response()
        assert r.status == 200, r
    finally:
        c.close()


@pytest.mark.parametrize("broken", ["badmagic", "loadfail"])
def test_a_broken_replacement_keeps_the_previous_build(serve, broken, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance", libbeta="hello")
    s = serve(["--apps-dir", d], workers=2)
    before = hashes(status_at(s, 1))
    put(d, "libalpha", broken)
    put(d, "libbeta", "conformance2")
    log = hup(s, 2)

    assert body(s.port, "/alpha/") == (200, CONF1)
    assert environ(s.port, "/alpha/environ")["extensions"]["srv.app_hash"] == before["/alpha"]
    assert body(s.port, "/beta/") == (200, CONF2)
    assert re.search(r"/alpha.*keeping its previous build " + before["/alpha"][:12], log), log

    st = status_at(s, 2)
    assert hashes(st)["/alpha"] == before["/alpha"]
    assert [e["mount"] for e in st["appErrors"]] == ["/alpha"], st

    # a good build afterwards replaces it
    put(d, "libalpha", "conformance2")
    hup(s, 3)
    assert body(s.port, "/alpha/") == (200, CONF2)
    assert status_at(s, 3)["appErrors"] == []


# --- --reload: inotify on the directory ---------------------------------------------------

def reloads(log):
    return len(re.findall(r"application files changed \(--reload\)", log))


def ready_generations(log):
    return [int(g) for g in re.findall(r"generation (\d+) ready", log)]


def test_reload_picks_up_new_changed_and_removed_files(serve, tmp_path):
    d = apps_dir(tmp_path, libalpha="conformance")
    s = serve(["--apps-dir", d, "--reload", "--reload-delay", "0.5"], workers=2)
    since = len(s.read_log())

    put(d, "libbeta", "hello")
    s.wait_log(r"generation 2 ready", timeout=30, since=since)
    assert body(s.port, "/beta/") == (200, HELLO)

    put(d, "libalpha", "conformance2")
    s.wait_log(r"generation 3 ready", timeout=30, since=since)
    assert body(s.port, "/alpha/") == (200, CONF2)

    os.unlink(os.path.join(d, "libbeta.so"))
    s.wait_log(r"generation 4 ready", timeout=30, since=since)
    assert_plain_404(get(s.port, "/beta/"))
    assert body(s.port, "/alpha/") == (200, CONF2)
    assert reloads(s.read_log()[since:]) == 3
    assert re.search(r"app /beta: unmounted \(\S*libbeta\.so is no longer", s.read_log()[since:]), s.read_log()[since:]


def test_a_file_event_that_changes_no_build_restarts_nothing(serve, tmp_path):
    """--reload saw a file event (a touch, a copy of the same bytes), but every build is
    the serving one: the workers keep serving, and the log says so without mentioning a
    HUP nobody sent."""
    d = apps_dir(tmp_path, libalpha="conformance")
    s = serve(["--apps-dir", d, "--reload", "--reload-delay", "0.5"], workers=2)
    workers = s.worker_pids()
    since = len(s.read_log())
    put(d, "libalpha", "conformance")  # the same bytes, rewritten
    s.wait_log(r"reload: no application changed; generation 1 keeps serving", timeout=30, since=since)
    log = s.read_log()[since:]
    assert "HUP" not in log and "booting generation" not in log, log
    assert s.worker_pids() == workers
    assert body(s.port, "/alpha/") == (200, CONF1)


def test_reload_waits_until_the_file_stops_changing(serve, tmp_path):
    # The delay is 2 s, ten times the 0.2 s between writes, so that a loaded machine that
    # stretches a pause does not make a quiet moment; the writes last 3 s in all, longer
    # than the delay, so a delay counted from the first change (not the last) would reload
    # a half-written file.
    delay = 2.0
    d = apps_dir(tmp_path, libalpha="conformance")
    s = serve(["--apps-dir", d, "--reload", "--reload-delay", str(delay)])
    since = len(s.read_log())
    with open(plugin("conformance2"), "rb") as f:
        data = f.read()
    # Write libgamma.so slowly: 16 pieces, 0.2 s apart (under the delay), 3 s in all.
    path = os.path.join(d, "libgamma.so")
    pieces = 16
    step = len(data) // pieces + 1
    with open(path, "wb") as f:
        for i in range(pieces):
            f.write(data[i * step:(i + 1) * step])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.2)
            assert reloads(s.read_log()[since:]) == 0, "reloaded while the file was still changing"
    s.wait_log(r"generation 2 ready", timeout=30, since=since)
    assert body(s.port, "/gamma/") == (200, CONF2)
    # No second reload trails behind. A negative check, so a window: any change that could
    # start one was seen before generation 2 was ready, and its reload would be due
    # `delay` after it; one more second covers the master's loop.
    time.sleep(delay + 1.0)
    log = s.read_log()[since:]
    assert reloads(log) == 1, log
    assert "not mounted" not in log, log  # never saw a half-written file


def test_reload_ignores_temporary_names_until_renamed(serve, tmp_path):
    # The atomic deploy: copy to a name that is not an application, then rename.
    d = apps_dir(tmp_path, libalpha="conformance")
    s = serve(["--apps-dir", d, "--reload", "--reload-delay", "0.5"])
    since = len(s.read_log())
    tmp = os.path.join(d, ".libgamma.so.part")
    shutil.copyfile(plugin("conformance2"), tmp)
    # A negative check, so a window: a reload the copy started would be due 0.5 s after it
    # (the delay); 1.2 s covers that, and the count after the rename (exactly 1) would
    # catch one that came later.
    time.sleep(1.2)
    assert reloads(s.read_log()[since:]) == 0, s.read_log()[since:]
    assert_plain_404(get(s.port, "/gamma/"))
    os.rename(tmp, os.path.join(d, "libgamma.so"))
    s.wait_log(r"generation 2 ready", timeout=30, since=since)
    assert body(s.port, "/gamma/") == (200, CONF2)
    # Window: every change was seen before generation 2 was ready; a trailing reload would
    # be due 0.5 s after its change.
    time.sleep(1.5)
    assert reloads(s.read_log()[since:]) == 1, s.read_log()[since:]


def test_a_burst_of_changes_makes_one_reload(serve, tmp_path):
    # A 2 s delay: the three copies are a burst even when a loaded machine spaces them out.
    delay = 2.0
    d = apps_dir(tmp_path, libalpha="conformance")
    s = serve(["--apps-dir", d, "--reload", "--reload-delay", str(delay)], workers=2)
    since = len(s.read_log())
    put(d, "libbeta", "hello")
    put(d, "libgamma", "conformance2")
    put(d, "libdelta", "conformance")
    s.wait_log(r"generation 2 ready", timeout=30, since=since)
    assert body(s.port, "/beta/") == (200, HELLO)
    assert body(s.port, "/gamma/") == (200, CONF2)
    assert body(s.port, "/delta/") == (200, CONF1)
    # No second reload trails behind. A negative check, so a window: every change was seen
    # before generation 2 was ready, and a reload it started would be due `delay` after it.
    time.sleep(delay + 1.0)
    log = s.read_log()[since:]
    assert reloads(log) == 1, log
    assert len(re.findall(r"reload: booting generation", log)) == 1, log
    assert ready_generations(log) == [2], log


# --- each mount runs its own load hook ----------------------------------------------------

def test_each_mount_runs_its_own_load_hook_in_every_worker(serve, tmp_path):
    # Two copies of the same .so: each must still be its own application with its own
    # state, loaded with its own mount in each worker.
    d = apps_dir(tmp_path, libalpha="conformance", libbeta="conformance")
    s = serve(["--apps-dir", d], workers=2)
    workers = set(s.worker_pids())
    assert len(workers) == 2
    seen = {"/alpha": set(), "/beta": set()}
    deadline = time.time() + 30
    while time.time() < deadline and not all(v == workers for v in seen.values()):
        for mount in seen:
            c = Conn(s.port)
            try:
                # one keep-alive connection: both requests reach the same worker
                c.send(f"GET {mount}/environ HTTP/1.1\r\nHost: x\r\n\r\n"
                       f"GET {mount}/loaded HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                env = json.loads(c.read_response().body)
                loaded = c.read_response()
            finally:
                c.close()
            assert loaded.status == 200, loaded
            m = re.match(r"pid (\d+) mount '([^']*)' abi (\d+)\.(\d+) server (\S+)", loaded.body.decode())
            assert m, loaded.body
            pid = int(env["extensions"]["srv.worker_pid"])
            assert int(m.group(1)) == pid, (mount, loaded.body, env["extensions"])
            assert m.group(2) == mount, f"{mount}/loaded saw mount {m.group(2)!r}: {loaded.body!r}"
            seen[mount].add(pid)
    assert seen == {"/alpha": workers, "/beta": workers}, (seen, workers)
