"""GATEWAY.md's tables, walked row by row against the real server.

PluginSDK/GATEWAY.md states most of its promises in tables: the environ fields, the
srv_input fields, the server extension keys, the response body fields, the descriptor
fields, the Lifetimes, the Threads, the Error handling outcomes, and (in the Loading
steps) the reason names of every refusal. This module parses those tables out of the
markdown when it is collected, and runs, for each row, the check registered for it with
@row(TABLE, FIRST CELL). The test id is TABLE-FIRST CELL.

Coverage is enforced both ways:
- a row of the spec without a registered check fails (add a check when you add a row);
- a registered check whose row is no longer in the spec fails (its id is stale);
- a table of the spec this module does not know fails.
A row whose promise cannot be observed from outside at all is listed in NOT_OBSERVABLE
with a one-line reason; it is reported as skipped.

The applications are libconformance.so (Examples/conformance) and libtables.so
(Tests/Plugins/tables.c, with its variants libtablesanon.so, a NULL name and version,
and libtablesserial.so, without SRV_FLAG_THREAD_SAFE), which reports what srv handed it
and on which threads. Servers are per module and started only when a check needs them.
"""
import concurrent.futures
import hashlib
import inspect
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT, SRV, Conn, free_port, plugin, request, snapshots_held, status, wait_until

SPEC_PATH = os.path.join(ROOT, "PluginSDK", "GATEWAY.md")
HEADER_DIR = os.path.join(ROOT, "PluginSDK", "C", "include")


# ---------------------------------------------------------------------------------------
# The spec's tables, parsed at collection time
# ---------------------------------------------------------------------------------------

def split_row(line):
    """The cells of one markdown table row; a | inside `code` does not split."""
    cells, cur, code = [], "", False
    body = line.strip()
    assert body.startswith("|") and body.endswith("|"), line
    for ch in body[1:-1]:
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


def plain(cell):
    return cell.replace("`", "").strip()


def parse_tables(text):
    """[(heading, header cells, rows)] for every table outside fenced code."""
    lines = text.split("\n")
    tables, heading, fence, i = [], None, False, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            m = re.match(r"#{1,6} (.*)", line)
            if m:
                heading = m.group(1).strip()
            if (line.startswith("|") and i + 1 < len(lines)
                    and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1])):
                header, rows, j = split_row(line), [], i + 2
                while j < len(lines) and lines[j].startswith("|"):
                    rows.append(split_row(lines[j]))
                    j += 1
                tables.append((heading, header, rows))
                i = j
                continue
        i += 1
    return tables


def parse_reason_names(text):
    """The refusal reason names of the Loading section, in order: `name` in parentheses or
    after a dash (`(`missing-file`)`, `(`crashed`, `hung`)`, `— `not-elf``)."""
    section = re.search(r"^## Loading\n(.*?)^## ", text, re.S | re.M)
    assert section, "GATEWAY.md has no '## Loading' section"
    name = r"`([a-z]+(?:-[a-z]+)*)`"
    found = []
    for m in re.finditer(rf"\({name}(?:, {name})?|—\s+{name}", section.group(1)):
        for n in m.groups():
            if n and n not in found:
                found.append(n)
    return found


# Each table this module walks: its header row, and the heading it sits under when the
# header alone is ambiguous.
TABLES = {
    "front matter": ("The srv gateway interface", ["", ""]),
    "srv_input": ("Streams: input and errors", ["Field", "Meaning"]),
    "environ": ("environ", ["Field", "WSGI / CGI name", "Meaning"]),
    "extensions": (None, ["Key", "Value"]),
    "body": ("The response body", ["Field", "Meaning"]),
    "descriptor": ("The descriptor", ["Field", "Meaning"]),
    "lifetimes": ("Lifetimes", ["Pointer", "Owner", "Valid"]),
    "threads": ("Threads", ["Function", "Called by", "On which thread"]),
    "errors": ("Error handling", ["Situation", "Outcome", "Log"]),
}
REASONS = "loading reasons"  # not a markdown table: the reason names of ## Loading

with open(SPEC_PATH, encoding="utf-8") as _f:
    SPEC_TEXT = _f.read()
SPEC_TABLES = parse_tables(SPEC_TEXT)


def table_key(heading, header):
    for key, (want_heading, want_header) in TABLES.items():
        if header == want_header and (want_heading is None or heading == want_heading):
            return key
    return None


SPEC_ROWS = {}  # table key -> {plain first cell: cells}
UNKNOWN_TABLES = []
for _heading, _header, _rows in SPEC_TABLES:
    _key = table_key(_heading, _header)
    if _key is None:
        UNKNOWN_TABLES.append((_heading, _header))
        continue
    SPEC_ROWS.setdefault(_key, {})
    for _cells in _rows:
        SPEC_ROWS[_key].setdefault(plain(_cells[0]), _cells)
SPEC_ROWS[REASONS] = {n: [n] for n in parse_reason_names(SPEC_TEXT)}


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------

CHECKS = {}  # table -> {first cell: check function}
DUPLICATES = []


def row(table, *first_cells):
    """Registers the decorated function as the check of these rows of `table`. Its
    parameters are fixtures of this module (servers started on first use), and `cells`,
    the row's cells."""
    def register(fn):
        for cell in first_cells:
            if cell in CHECKS.setdefault(table, {}):
                DUPLICATES.append((table, cell))
            CHECKS[table][cell] = fn
        return fn
    return register


# The last resort: rows whose promise cannot be observed from outside, one line each.
NOT_OBSERVABLE = {
    "front matter": {
        "Title": "the document's title, not a behaviour",
        "Status": "the document's standing (Active), not a behaviour",
        "Type": "the document's kind (Standards track), not a behaviour",
        "Based on": "lineage (PEP 3333); the environ, extensions and errors rows check what srv took from it",
    },
}


# ---------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------

def _row_params():
    params = []
    for table in list(TABLES) + [REASONS]:
        for cell in SPEC_ROWS.get(table, {}):
            params.append(pytest.param(table, cell, id=f"{table}-{cell}"))
    return params


@pytest.mark.parametrize("table, cell", _row_params())
def test_row(table, cell, request):
    """The promise of one row of GATEWAY.md holds against the real server."""
    fn = CHECKS.get(table, {}).get(cell)
    reason = NOT_OBSERVABLE.get(table, {}).get(cell)
    assert not (fn and reason), f"{table} row {cell!r} has a check and is listed as not observable: choose one"
    if reason:
        pytest.skip(f"documented, not observable: {reason}")
    if fn is None:
        how = (f"add it to REFUSED with the plugins srv refuses with it" if table == REASONS
               else f"register one with @row({table!r}, {cell!r})")
        pytest.fail(f"GATEWAY.md's {table} table has a row {cell!r} that no check covers: "
                    f"{how} in {os.path.basename(__file__)}")
    kwargs = {}
    for name in inspect.signature(fn).parameters:
        kwargs[name] = SPEC_ROWS[table][cell] if name == "cells" else request.getfixturevalue(name)
    fn(**kwargs)


@pytest.mark.parametrize("table", list(TABLES) + [REASONS])
def test_every_registered_check_has_its_row(table):
    """A check (or a not-observable entry) whose row left the spec is stale: rename it
    with its row, or delete it with its row."""
    assert SPEC_ROWS.get(table), f"GATEWAY.md no longer has the {table} table this module walks"
    registered = set(CHECKS.get(table, {})) | set(NOT_OBSERVABLE.get(table, {}))
    stale = sorted(registered - set(SPEC_ROWS[table]))
    assert not stale, f"checks registered for {table} rows GATEWAY.md does not have: {stale}"


def test_every_table_of_the_spec_is_walked():
    assert not UNKNOWN_TABLES, f"tables of GATEWAY.md no key of TABLES matches (walk them): {UNKNOWN_TABLES}"
    found = [table_key(h, hd) for h, hd, _ in SPEC_TABLES]
    for key in TABLES:
        assert found.count(key) == 1, f"{key}: expected one table in GATEWAY.md, found {found.count(key)}"
    assert not DUPLICATES, f"rows registered twice: {DUPLICATES}"
    unknown = set(CHECKS) | set(NOT_OBSERVABLE)
    assert unknown <= set(TABLES) | {REASONS}, f"checks for tables that do not exist: {unknown - set(TABLES)}"


# ---------------------------------------------------------------------------------------
# Servers (per module, started on first use)
# ---------------------------------------------------------------------------------------

def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def work():
    """This module's scratch directory. Every server fixture asks for it before
    module_servers, so that it is removed after the servers stopped."""
    d = tempfile.mkdtemp(prefix="srv-tables-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def inline(work, module_servers):
    """One worker, no --threads: conformance at /, tables at /t, tablesanon at /anon,
    hello at /hello; TCP, a Unix socket and (when there is one) [::1]; an access log."""
    sock = os.path.join(work, "inline.sock")
    access = os.path.join(work, "access.log")
    args = ["--app", plugin("conformance"), "--mount", f"/t={plugin('tables')}",
            "--mount", f"/anon={plugin('tablesanon')}", "--mount", f"/hello={plugin('hello')}",
            "-b", f"unix:{sock}", "--access-logfile", access]
    port6 = None
    if ipv6_loopback():
        port6 = free_port()
        args += ["-b", f"[::1]:{port6}"]
    s = module_servers(args, workers=1)
    s.unix, s.access, s.port6 = sock, access, port6
    deadline = time.time() + 30
    while not os.path.exists(sock) and time.time() < deadline:
        time.sleep(0.05)
    return s


@pytest.fixture(scope="module")
def threads(work, module_servers):
    """One worker with --threads 2: conformance at /c, tables at /t."""
    return module_servers(["--mount", f"/c={plugin('conformance')}", "--mount", f"/t={plugin('tables')}",
                           "--threads", "2"], workers=1)


@pytest.fixture(scope="module")
def multi(work, module_servers):
    """Two workers with --threads 2 that trust no peer (--forwarded-allow-ips 10.0.0.1)."""
    return module_servers(["--app", plugin("conformance"), "--threads", "2", "--forwarded-allow-ips", "10.0.0.1"],
                          workers=2)


@pytest.fixture(scope="module")
def proxied(work, module_servers):
    return module_servers(["--app", plugin("conformance"), "--proxy-protocol"])


@pytest.fixture(scope="module")
def reloaded(work, module_servers):
    """A copy of conformance, reloaded (SIGHUP) after conformance2 was copied over it in
    place: what /environ and the workers showed before and after."""
    d = os.path.join(work, "reload")
    os.makedirs(d)
    app = os.path.join(d, "libapp.so")
    shutil.copyfile(plugin("conformance"), app)
    s = module_servers(["--app", app], workers=1)
    before = environ_of(s.port)
    pids_before = s.worker_pids()
    maps_before = mapped_files(pids_before[0])
    shutil.copyfile(plugin("conformance2"), app)  # in place: the running snapshot is not this file
    s.signal(signal.SIGHUP)
    deadline = time.time() + 60
    after = before
    while time.time() < deadline:
        after = environ_of(s.port)
        if after["extensions"]["srv.generation"] != before["extensions"]["srv.generation"]:
            break
        time.sleep(0.2)
    assert after["extensions"]["srv.generation"] != before["extensions"]["srv.generation"], s.read_log()
    pid_after = int(after["extensions"]["srv.worker_pid"])
    return {"server": s, "app": app, "before": before, "after": after, "maps_before": maps_before,
            "maps_after": mapped_files(pid_after), "held_after": snapshots_held(pid_after)}


@pytest.fixture(scope="module")
def unload_run(work, module_servers):
    """conformance on two workers with an unload file: one worker is killed (SIGKILL) and
    replaced, then the master is stopped gracefully (SIGTERM)."""
    unload_file = os.path.join(work, "unloads")
    s = module_servers(["--app", plugin("conformance"), "--graceful-timeout", "10"], workers=2,
                       env={"SRV_CONFORMANCE_UNLOAD_FILE": unload_file})
    for _ in range(4):
        assert request(s.port, path="/counter").status == 200
    first = s.worker_pids()
    assert len(first) == 2, first
    killed = first[0]
    os.kill(killed, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        pids = s.worker_pids()
        if len(pids) == 2 and killed not in pids:
            break
        time.sleep(0.1)
    final = s.worker_pids()
    assert len(final) == 2 and killed not in final, (final, s.read_log())
    while time.time() < deadline:  # the replacement has booted and serves: it can exit gracefully
        states = {w["pid"]: w["state"] for w in status(s)["workers"]}
        if all(states.get(p) == "serving" for p in final):
            break
        time.sleep(0.1)
    s.signal(signal.SIGTERM)
    s.proc.wait(timeout=60)
    with open(unload_file) as f:
        lines = f.read().splitlines()
    return {"killed": killed, "final": final, "lines": lines, "rc": s.proc.returncode, "log": s.read_log()}


# The broken plugins of Tests/Plugins, by the reason srv must refuse each with.
REFUSED = {
    "missing-file": ["missing"], "unreadable": ["unreadable"], "not-a-file": ["directory"],
    "not-elf": ["notelf"], "wrong-elf-class": ["elf32"], "wrong-machine": ["badmachine"],
    "not-shared-object": ["relocatable", "executable"], "undefined-symbols": ["undefined"],
    "missing-descriptor": ["nodescriptor"], "bad-magic": ["badmagic"], "abi-major-mismatch": ["abimajor"],
    "abi-minor-too-new": ["abiminor"], "descriptor-too-small": ["toosmall"], "missing-entry-point": ["noentry"],
    "swift-toolchain-mismatch": ["otherswift"], "load-hook-failed": ["loadfail"],
    "crashed": ["loadcrash", "ctorcrash"], "hung": ["loadhang"], "writable-by-others": ["writable"],
}


def as_unprivileged():
    """A prefix that runs a command as nobody when we are root (root reads any file)."""
    if os.geteuid() != 0:
        return []
    pw = pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]


@pytest.fixture(scope="module")
def refusals(work, module_servers):
    """Every broken plugin in one directory: `srv check --json` on each file, and an
    --apps-dir server (which logs and reports every refusal and serves the rest)."""
    d = os.path.join(work, "apps")
    os.makedirs(d)
    os.chmod(d, 0o755)
    files = {}
    for names in REFUSED.values():
        for name in names:
            path = os.path.join(d, f"lib{name}.so")
            files[name] = path
            if name == "missing":
                os.symlink(os.path.join(work, "no-such-file.so"), path)
            elif name == "directory":
                os.makedirs(path)
            elif name == "unreadable":
                shutil.copyfile(plugin("valid"), path)
                os.chmod(path, 0)
            elif name == "writable":
                shutil.copyfile(plugin("valid"), path)
                os.chmod(path, 0o666)
            else:
                shutil.copyfile(plugin(name), path)
                os.chmod(path, 0o644)
    shutil.copyfile(plugin("valid"), os.path.join(d, "libvalid.so"))
    os.chmod(os.path.join(d, "libvalid.so"), 0o644)
    prefix = as_unprivileged()
    tmp = os.path.join(work, "refusals-server")  # srv's files, written as the unprivileged user
    os.makedirs(tmp)
    os.chmod(tmp, 0o777)
    s = module_servers(["--apps-dir", d, "--boot-timeout", "5"], workers=1, tmp=tmp, wrapper=prefix or None,
                       wait=False)
    out = subprocess.run(prefix + [SRV, "check", "--json", "--timeout", "5"] + list(files.values()),
                         capture_output=True, text=True, timeout=120)
    reports = {r["path"]: r for r in json.loads(out.stdout)}
    s.wait_ready()
    st = status(s)
    return {"files": files, "reports": reports, "log": s.read_log(),
            "appErrors": {e["mount"]: e["error"] for e in st.get("appErrors", [])}, "server": s}


@pytest.fixture(scope="module")
def layout(work):
    """The descriptor's layout and the header's constants, as a C compiler sees them."""
    src = os.path.join(work, "layout.c")
    exe = os.path.join(work, "layout")
    with open(src, "w") as f:
        f.write(r"""
#include <srv/gateway.h>
#include <stdio.h>
int main(void) {
    printf("{\"magic\":%zu,\"abi_major\":%zu,\"abi_minor\":%zu,\"descriptor_size\":%zu,"
           "\"sizeof_descriptor\":%zu,\"sizeof_environ\":%zu,\"sizeof_body\":%zu,"
           "\"SRV_ABI_MAJOR\":%d,\"SRV_ABI_MINOR\":%d,\"SRV_ABI_MINOR_REQUIRED\":%d,"
           "\"SRV_GATEWAY_MAGIC\":%u,\"SRV_DESCRIPTOR_SIZE_1_0\":%d,\"SRV_FLAG_THREAD_SAFE\":%u,"
           "\"SRV_DESCRIPTOR_SYMBOL\":\"%s\",\"SRV_APP_SYMBOL\":\"%s\"}\n",
           offsetof(srv_descriptor, magic), offsetof(srv_descriptor, abi_major),
           offsetof(srv_descriptor, abi_minor), offsetof(srv_descriptor, descriptor_size),
           sizeof(srv_descriptor), sizeof(srv_environ), sizeof(srv_body), SRV_ABI_MAJOR, SRV_ABI_MINOR,
           SRV_ABI_MINOR_REQUIRED, (unsigned)SRV_GATEWAY_MAGIC, SRV_DESCRIPTOR_SIZE_1_0,
           (unsigned)SRV_FLAG_THREAD_SAFE, SRV_DESCRIPTOR_SYMBOL, SRV_APP_SYMBOL);
    return 0;
}
""")
    cc = subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I", HEADER_DIR,
                         "-o", exe, src], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    return json.loads(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def exchange(data, port=None, unix=None, family=socket.AF_INET, host="127.0.0.1", timeout=20):
    """Sends `data` on a fresh connection; every byte srv sends until it closes (a reset
    counts as a close)."""
    s = socket.socket(socket.AF_UNIX if unix else family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(unix if unix else (host, port))
        s.sendall(data.encode("latin-1") if isinstance(data, str) else data)
        parts = []
        while True:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts)
    finally:
        s.close()


def environ_of(port=None, head="GET /environ HTTP/1.1\r\nHost: 127.0.0.1\r\n", body=b"", unix=None,
               family=socket.AF_INET, host="127.0.0.1", prefix=b""):
    """conformance's /environ JSON for a request whose head (without the empty line and
    Connection: close) is `head`."""
    got = exchange(prefix + (head + "Connection: close\r\n\r\n").encode("latin-1") + body, port=port, unix=unix,
                   family=family, host=host)
    assert got.startswith(b"HTTP/1.1 200"), got[:500]
    return json.loads(parse_response(got)[2])


def parse_response(got):
    """(status line, {lower name: [values]}, body with the chunked coding removed,
    whether the response was complete, the bytes after it) of the first response in
    `got`."""
    head, _, rest = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    if headers.get("transfer-encoding", [""])[0].lower() == "chunked":
        parts, complete, i = [], False, 0
        while True:
            eol = rest.find(b"\r\n", i)
            if eol < 0:
                break
            try:
                size = int(rest[i:eol].split(b";")[0], 16)
            except ValueError:
                break
            i = eol + 2
            if size == 0:
                complete = rest[i:i + 2] == b"\r\n"
                i += 2 if complete else 0
                break
            parts.append(rest[i:i + size])
            if len(rest) < i + size + 2:
                i = len(rest)
                break
            i += size + 2
        return lines[0], headers, b"".join(parts), complete, rest[i:]
    if "content-length" in headers:
        n = int(headers["content-length"][0])
        return lines[0], headers, rest[:n], len(rest) >= n, rest[n:]
    return lines[0], headers, rest, True, b""


PROBE = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
PROBE_BODY = b"conformance 1.0.0\n"


def assert_aborted(server, target, sent, method="GET"):
    """`target` (pipelined with a probe request) is a committed 200 whose connection srv
    aborts: the client got `sent` (the committed bytes) and an incomplete response, and
    the probe was never answered."""
    got = exchange(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + PROBE, port=server.port)
    line, headers, body, complete, rest = parse_response(got)
    assert line.startswith("HTTP/1.1 200"), got[:300]
    assert not complete, f"the response was finished instead of aborted: {got[:300]!r}"
    assert body == sent, (body[:100], sent)
    assert PROBE_BODY not in got, "the connection served the next request: it was not aborted"


def status_line(got):
    return got.split(b"\r\n", 1)[0]


def tables_json(server, prefix="/t"):
    r = request(server.port, path=f"{prefix}/?op=stats")
    assert r.status == 200, r
    return json.loads(r.body)


def mapped_files(pid):
    with open(f"/proc/{pid}/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def log_since(server, mark):
    return server.read_log()[mark:]


def rule_of(cells):
    """The rule name of an Error handling row's Log cell ("rule 'X'"), or None."""
    m = re.search(r"'([^']+)'", cells[-1])
    return m.group(1) if m else None


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def parallel(fns):
    with concurrent.futures.ThreadPoolExecutor(len(fns)) as pool:
        futures = [pool.submit(fn) for fn in fns]
        return [f.result(timeout=60) for f in futures]


def descriptor_bytes(path):
    """The offset of the 24 fixed bytes of the descriptor in the file, and their values."""
    with open(path, "rb") as f:
        data = f.read()
    offsets = [m.start() for m in re.finditer(re.escape(struct.pack("<I", 0x47565253)), data)]
    found = [(o, struct.unpack_from("<IHHIIII", data, o)) for o in offsets
             if struct.unpack_from("<HH", data, o + 4) == (1, 0)]
    assert len(found) == 1, (path, found)
    return found[0]


def patched_copy(src, dst, **fields):
    """A copy of plugin `src` with descriptor fields (environ_size, body_size, flags)
    overwritten in the file, as Tests/Plugins/Makefile patches ELF headers."""
    where = {"environ_size": 12, "body_size": 16, "flags": 20}
    offset, _ = descriptor_bytes(src)
    with open(src, "rb") as f:
        data = bytearray(f.read())
    for name, value in fields.items():
        struct.pack_into("<I", data, offset + where[name], value)
    with open(dst, "wb") as f:
        f.write(data)
    return dst


# =======================================================================================
# Front matter
# =======================================================================================

@row("front matter", "ABI version")
def check_abi_version(cells, inline, layout):
    """"1.0 (SRV_ABI_MAJOR 1, SRV_ABI_MINOR 0)": the header, srv check, the load hook's
    srv_server_info and srv --version all say the same version."""
    m = re.match(r"(\d+)\.(\d+) \(`SRV_ABI_MAJOR` (\d+), `SRV_ABI_MINOR` (\d+)\)", cells[1])
    assert m, cells
    major, minor = int(m.group(1)), int(m.group(2))
    assert (layout["SRV_ABI_MAJOR"], layout["SRV_ABI_MINOR"]) == (major, minor) == (int(m.group(3)), int(m.group(4)))
    out = subprocess.run([SRV, "check", "--json", plugin("tables")], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)[0]["abi"] == f"{major}.{minor}", out.stdout
    assert f"abi {major}.{minor} " in request(inline.port, path="/loaded").body.decode()
    version = subprocess.run([SRV, "--version"], capture_output=True, text=True).stdout
    assert f"gateway ABI {major}.{minor}" in version, version


@row("front matter", "Header")
def check_header(cells, layout):
    """The header the table links is where it says, and declares the two symbols srv
    looks up, which every plugin built with it exports."""
    m = re.search(r"\]\(([^)]+)\)", cells[1])
    path = os.path.join(ROOT, "PluginSDK", m.group(1))
    assert os.path.realpath(path) == os.path.realpath(os.path.join(HEADER_DIR, "srv", "gateway.h"))
    nm = subprocess.run(["nm", "-D", "--defined-only", plugin("tables")], capture_output=True, text=True)
    exported = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    assert {layout["SRV_DESCRIPTOR_SYMBOL"], layout["SRV_APP_SYMBOL"]} <= exported, nm.stdout


# =======================================================================================
# srv_input
# =======================================================================================

@row("srv_input", "size")
def check_input_size(cells, inline):
    m = re.search(r"\((\d+) in ABI 1\.0\)", cells[1])
    sizes = json.loads(request(inline.port, path="/t/?op=sizes").body)
    assert sizes["input"] == sizes["input_compiled"] == int(m.group(1)), sizes


@row("srv_input", "length")
def check_input_length(inline):
    """The decoded length for a chunked request, 0 without a body."""
    r = request(inline.port, method="POST", path="/echo", body=b"0123456789")
    assert r.header("X-Input-Length") == "10", r
    r = request(inline.port, method="POST", path="/echo", headers={"Transfer-Encoding": "chunked"},
                body=b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")
    assert (r.header("X-Input-Length"), r.body) == ("8", b"abcdefgh"), r
    r = request(inline.port, path="/echo")
    assert (r.header("X-Input-Length"), r.body) == ("0", b""), r
    env = environ_of(inline.port, "POST /environ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n",
                     body=b"4\r\nwxyz\r\n0\r\n\r\n")
    assert env["input_length"] == 4 and env["CONTENT_LENGTH"] == "4", env


@row("srv_input", "read(buf, n)")
def check_input_read(inline):
    """Up to n bytes per call, 0 only at the end: /echo reads 7 bytes at a time (and
    answers 500 if a call returned more), stops at the first 0; 1 MiB+ (spooled) too."""
    for body in [b"x", bytes(range(256)) * 3, os.urandom(3 << 20)]:
        r = request(inline.port, method="POST", path="/echo", body=body)
        assert r.status == 200 and r.body == body, (len(body), r.status, len(r.body))
        calls = int(r.header("X-Read-Calls"))
        assert calls >= -(-len(body) // 7) + 1, (len(body), calls)
    r = request(inline.port, method="POST", path="/read-past", body=b"abc")
    assert r.body == b"read 3 bytes, then 0 0 0\n", r


# =======================================================================================
# environ
# =======================================================================================

@row("environ", "size")
def check_environ_size(inline):
    sizes = json.loads(request(inline.port, path="/t/?op=sizes").body)
    assert sizes["environ"] == sizes["environ_compiled"], sizes
    assert re.search(rf"`srv_environ` \({sizes['environ']} bytes in ABI 1\.0\)", SPEC_TEXT), sizes


@row("environ", "request_method")
def check_request_method(inline):
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"]:
        env = environ_of(inline.port, f"{method} /environ HTTP/1.1\r\nHost: x\r\n")
        assert env["REQUEST_METHOD"] == method, env


@row("environ", "script_name")
def check_script_name(inline, threads):
    assert environ_of(inline.port)["SCRIPT_NAME"] == ""
    assert environ_of(threads.port, "GET /c/environ HTTP/1.1\r\nHost: x\r\n")["SCRIPT_NAME"] == "/c"
    # The mount as configured, whatever spelling of it the client used.
    assert environ_of(threads.port, "GET /%63/environ HTTP/1.1\r\nHost: x\r\n")["SCRIPT_NAME"] == "/c"


@row("environ", "path_info")
def check_path_info(inline, threads):
    """Percent-decoded, dot segments resolved, never a NUL; "" at the mount point."""
    for target in ["/environ", "/%65nviron", "/x/../environ", "/./environ", "/x/%2e%2E/environ"]:
        env = environ_of(inline.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n")
        assert env["PATH_INFO"] == "/environ", (target, env["PATH_INFO"])
    env = environ_of(threads.port, "GET /c/a%2Fb/../../environ HTTP/1.1\r\nHost: x\r\n")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/c", "/environ"), env
    for target, path_info in [("/t?op=iter-environ&n=1", ""), ("/t/?op=iter-environ&n=1", "/"),
                              ("/t/a%2Fb/./c?op=iter-environ&n=1", "/a/b/c")]:
        r = request(inline.port, path=target)
        assert r.status == 200 and f" p={path_info} tag=".encode() in r.body, (target, r.body[:200])
    for target in ["/env%00iron", "/t/%00?op=sizes", "/../environ"]:
        assert request(inline.port, path=target).status == 400, target


@row("environ", "query_string")
def check_query_string(inline):
    assert environ_of(inline.port, "GET /environ?a=%20b+c&d&e=%2F HTTP/1.1\r\nHost: x\r\n")["QUERY_STRING"] == "a=%20b+c&d&e=%2F"
    assert environ_of(inline.port)["QUERY_STRING"] == ""
    assert environ_of(inline.port, "GET /environ? HTTP/1.1\r\nHost: x\r\n")["QUERY_STRING"] == ""


@row("environ", "content_type")
def check_content_type(inline):
    env = environ_of(inline.port, "POST /environ HTTP/1.1\r\nHost: x\r\nContent-Type: text/x; charset=\"a b\"\r\n"
                     "Content-Length: 1\r\n", body=b"z")
    assert env["CONTENT_TYPE"] == 'text/x; charset="a b"', env
    assert environ_of(inline.port)["CONTENT_TYPE"] == ""


@row("environ", "content_length")
def check_content_length(inline):
    cases = [
        ("Content-Length: 5\r\n", b"hello", "5"),
        ("Transfer-Encoding: chunked\r\n", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", "5"),
        ("Content-Length: 0\r\n", b"", "0"),
        ("Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", "0"),
        ("", b"", ""),
    ]
    for header, body, expected in cases:
        env = environ_of(inline.port, f"POST /environ HTTP/1.1\r\nHost: x\r\n{header}", body=body)
        assert env["CONTENT_LENGTH"] == expected, (header, env["CONTENT_LENGTH"])
        assert env["input_length"] == int(expected or 0), (header, env["input_length"])


@row("environ", "server_name")
def check_server_name(inline):
    cases = [
        ("GET /environ HTTP/1.1\r\nHost: Example.COM:8080\r\n", "Example.COM"),
        ("GET /environ HTTP/1.1\r\nHost: [::1]:99\r\n", "[::1]"),
        ("GET /environ HTTP/1.1\r\nHost: plain.example\r\nX-Forwarded-Host: evil.example\r\n", "plain.example"),
        ("GET http://other.example:81/environ HTTP/1.1\r\nHost: host.example\r\n", "other.example"),
        ("GET /environ HTTP/1.0\r\n", "127.0.0.1"),
    ]
    for head, expected in cases:
        assert environ_of(inline.port, head)["SERVER_NAME"] == expected, head
    assert environ_of(head="GET /environ HTTP/1.0\r\n", unix=inline.unix)["SERVER_NAME"] == "localhost"
    if inline.port6:
        env = environ_of(inline.port6, "GET /environ HTTP/1.0\r\n", family=socket.AF_INET6, host="::1")
        assert env["SERVER_NAME"] == "[::1]", env


@row("environ", "server_port")
def check_server_port(inline, proxied):
    assert environ_of(inline.port)["SERVER_PORT"] == str(inline.port)
    assert environ_of(unix=inline.unix)["SERVER_PORT"] == ""
    env = environ_of(proxied.port, prefix=b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 443\r\n")
    assert env["SERVER_PORT"] == "443", env


@row("environ", "server_protocol")
def check_server_protocol(inline):
    assert environ_of(inline.port)["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ_of(inline.port, "GET /environ HTTP/1.0\r\nHost: x\r\n")["SERVER_PROTOCOL"] == "HTTP/1.0"


@row("environ", "remote_addr")
def check_remote_addr(inline, proxied, multi):
    assert environ_of(inline.port)["REMOTE_ADDR"] == "127.0.0.1"
    env = environ_of(proxied.port, prefix=b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 443\r\n")
    assert env["REMOTE_ADDR"] == "203.0.113.5", env
    xff = "GET /environ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1, 203.0.113.9\r\n"
    assert environ_of(inline.port, xff)["REMOTE_ADDR"] == "203.0.113.9"
    assert environ_of(multi.port, xff)["REMOTE_ADDR"] == "127.0.0.1", "an untrusted peer's X-Forwarded-For counts"
    assert environ_of(unix=inline.unix)["REMOTE_ADDR"] == ""
    assert environ_of(head=xff, unix=inline.unix)["REMOTE_ADDR"] == "203.0.113.9"


@row("environ", "remote_port")
def check_remote_port(inline, proxied):
    s = socket.create_connection(("127.0.0.1", inline.port), timeout=20)
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
    assert json.loads(parse_response(got)[2])["REMOTE_PORT"] == str(port)
    env = environ_of(proxied.port, prefix=b"PROXY TCP4 203.0.113.5 192.0.2.1 56324 443\r\n")
    assert env["REMOTE_PORT"] == "56324", env
    env = environ_of(inline.port, "GET /environ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.9", ""), env
    assert environ_of(unix=inline.unix)["REMOTE_PORT"] == ""


@row("environ", "url_scheme")
def check_url_scheme(inline, multi):
    assert environ_of(inline.port)["URL_SCHEME"] == "http"
    https = "GET /environ HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n"
    assert environ_of(inline.port, https)["URL_SCHEME"] == "https"
    assert environ_of(multi.port, https)["URL_SCHEME"] == "http", "an untrusted peer chose the scheme"


@row("environ", "request_uri")
def check_request_uri(inline):
    for target in ["/environ", "/./x/../%65nviron?a=%2F&b", "/%65nviron?q=%20+"]:
        env = environ_of(inline.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n")
        assert (env["PATH_INFO"], env["REQUEST_URI"]) == ("/environ", target), (target, env)


@row("environ", "headers, header_count")
def check_headers(inline):
    """Arrival order, names as sent, duplicates kept; Transfer-Encoding and names with
    "_" left out."""
    sent = [("Host", "x"), ("x-LoWeR", "a"), ("X-Dup", "1"), ("X_Under", "u"), ("Transfer-Encoding", "chunked"),
            ("X-Dup", "2"), ("accept", "*/*"), ("Connection", "close")]
    head = "POST /environ HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent) + "\r\n"
    got = exchange(head.encode() + b"3\r\nabc\r\n0\r\n\r\n", port=inline.port)
    env = json.loads(parse_response(got)[2])
    expected = [[k, v] for k, v in sent if k != "Transfer-Encoding" and "_" not in k]
    assert env["headers"] == expected, env["headers"]
    assert env["nul_terminated"] is True


@row("environ", "input")
def check_input(inline):
    body = bytes(range(256)) * 40
    r = request(inline.port, method="POST", path="/echo", body=body)
    assert r.status == 200 and r.body == body


@row("environ", "errors")
def check_errors(inline):
    mark = len(inline.read_log())
    assert request(inline.port, path="/errors").status == 200
    inline.wait_log(r"\[ERROR\] app conformance: conformance: hello from wsgi\.errors\n", since=mark)


@row("environ", "multithread")
def check_multithread(inline, threads, multi):
    assert environ_of(inline.port)["multithread"] is False, "no --threads: only the event loop calls the app"
    assert environ_of(threads.port, "GET /c/environ HTTP/1.1\r\nHost: x\r\n")["multithread"] is True
    assert environ_of(multi.port)["multithread"] is True


@row("environ", "multiprocess")
def check_multiprocess(inline, multi):
    assert environ_of(inline.port)["multiprocess"] is False
    assert environ_of(multi.port)["multiprocess"] is True


@row("environ", "run_once")
def check_run_once(inline, threads, multi):
    for server, path in [(inline, "/environ"), (threads, "/c/environ"), (multi, "/environ")]:
        assert environ_of(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n")["run_once"] is False


@row("environ", "extensions, extension_count")
def check_extensions(inline):
    """Key/value pairs defined by srv: the keys of the extension table, all srv.*."""
    ext = environ_of(inline.port)["extensions"]
    assert set(SPEC_ROWS["extensions"]) <= set(ext), (sorted(SPEC_ROWS["extensions"]), ext)
    assert all(k.startswith("srv.") and isinstance(v, str) for k, v in ext.items()), ext
    r = request(inline.port, path="/t/?op=iter-environ&n=1")
    assert re.search(rb" id=[0-9a-f]{12}-\d+ ", r.body), r.body


# =======================================================================================
# Server extension keys
# =======================================================================================

@row("extensions", "srv.version")
def check_srv_version(cells, inline):
    m = re.search(r'`"(srv/[^"]+)"`', cells[1])
    assert m, cells
    assert environ_of(inline.port)["extensions"]["srv.version"] == m.group(1)
    assert f"server {m.group(1)}" in request(inline.port, path="/loaded").body.decode()
    version = subprocess.run([SRV, "--version"], capture_output=True, text=True).stdout
    assert re.match(r"srv (\S+)", version) and "srv/" + re.match(r"srv (\S+)", version).group(1) == m.group(1), version


@row("extensions", "srv.request_id")
def check_srv_request_id(inline, multi):
    """Unique; the one srv's access log and error log use; a random prefix per worker
    process plus the request's number; a trusted proxy's valid X-Request-Id instead."""
    ids = {}
    for server in (inline, multi):
        envs = parallel([lambda s=server: environ_of(s.port) for _ in range(24)])
        for env in envs:
            rid, pid = env["extensions"]["srv.request_id"], env["extensions"]["srv.worker_pid"]
            assert re.fullmatch(r"[0-9a-f]{12}-\d+", rid), rid
            assert rid not in ids, rid
            ids[rid] = pid
    prefixes = {}
    for rid, pid in ids.items():
        prefixes.setdefault(rid.split("-")[0], set()).add(pid)
    assert all(len(pids) == 1 for pids in prefixes.values()), prefixes
    assert len(prefixes) == len(set(ids.values())) >= 2, prefixes
    # The access log's last field and the error log's (request ID).
    mark = len(inline.read_log())
    rid = "tables-row:check.1"
    r = request(inline.port, path="/error/twice", headers={"X-Request-Id": rid})
    assert r.status == 500
    inline.wait_log(rf"broke rule 'start_response called twice' on GET /error/twice \(request {re.escape(rid)}\)",
                    since=mark)
    own = environ_of(inline.port)["extensions"]["srv.request_id"]
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(inline.access) as f:
            last_fields = [line.split()[-1] for line in f.read().splitlines() if line.strip()]
        if rid in last_fields and own in last_fields:
            break
        time.sleep(0.1)
    assert rid in last_fields and own in last_fields, last_fields[-5:]
    # A trusted proxy's X-Request-Id: 1 to 128 letters, digits and -._:
    for given, taken in [("a", True), ("A-b.c_d:9", True), ("x" * 128, True), ("x" * 129, False),
                         ("bad id", False), ("semi;colon", False)]:
        env = environ_of(inline.port, f"GET /environ HTTP/1.1\r\nHost: x\r\nX-Request-Id: {given}\r\n")
        assert (env["extensions"]["srv.request_id"] == given) is taken, (given, env["extensions"])
    env = environ_of(multi.port, "GET /environ HTTP/1.1\r\nHost: x\r\nX-Request-Id: forged\r\n")
    assert env["extensions"]["srv.request_id"] != "forged", "an untrusted peer chose the request id"


@row("extensions", "srv.worker_pid")
def check_srv_worker_pid(inline, multi):
    for server in (inline, multi):
        env = environ_of(server.port)
        pid = env["extensions"]["srv.worker_pid"]
        assert re.fullmatch(r"[1-9]\d*", pid) and int(pid) in server.worker_pids(), (pid, server.worker_pids())
    counter = request(inline.port, path="/counter").body.decode()
    assert counter.startswith(f"pid {environ_of(inline.port)['extensions']['srv.worker_pid']} "), counter


@row("extensions", "srv.generation")
def check_srv_generation(reloaded):
    g1, g2 = reloaded["before"]["extensions"]["srv.generation"], reloaded["after"]["extensions"]["srv.generation"]
    assert re.fullmatch(r"\d+", g1) and re.fullmatch(r"\d+", g2), (g1, g2)
    assert int(g2) > int(g1), (g1, g2)
    deadline = time.time() + 30  # the previous generation's worker may still be draining
    while request(reloaded["server"].port, path="/").body != b"conformance 2.0.0\n" and time.time() < deadline:
        time.sleep(0.2)
    assert request(reloaded["server"].port, path="/").body == b"conformance 2.0.0\n"


@row("extensions", "srv.app_hash")
def check_srv_app_hash(reloaded, inline):
    """The SHA-256 of the plugin file's content: the snapshot srv loaded."""
    assert environ_of(inline.port)["extensions"]["srv.app_hash"] == sha256(plugin("conformance"))
    h1, h2 = reloaded["before"]["extensions"]["srv.app_hash"], reloaded["after"]["extensions"]["srv.app_hash"]
    assert (h1, h2) == (sha256(plugin("conformance")), sha256(plugin("conformance2"))), (h1, h2)
    held = reloaded["held_after"]
    current = held.get(f"srv-{h2[:12]}-libapp.so")
    assert current and sha256(current) == h2, held


# =======================================================================================
# The response body
# =======================================================================================

@row("body", "size")
def check_body_size(inline):
    r = request(inline.port, path="/body-zeroed")
    sizes = json.loads(request(inline.port, path="/t/?op=sizes").body)
    assert sizes["body"] == sizes["body_compiled"], sizes
    assert r.body.startswith(f"zeroed size={sizes['body']} ".encode()), r.body


@row("body", "kind")
def check_body_kind(inline, work):
    """Initially SRV_BODY_EMPTY; each kind is served; any other value is SRV_ERROR, and
    close is still called."""
    assert b" kind=0 " in request(inline.port, path="/body-zeroed").body
    assert json.loads(request(inline.port, path="/t/?op=sizes").body)["body_kind"] == 0
    r = request(inline.port, path="/write-big?mb=0")
    assert (r.status, r.body) == (200, b""), r                                 # EMPTY
    assert request(inline.port, path="/").body == PROBE_BODY                   # BYTES
    assert request(inline.port, path="/iter?n=2&size=2").body == b"aabb"       # ITER
    path = os.path.join(work, "kind.txt")
    with open(path, "wb") as f:
        f.write(b"file body\n")
    assert request(inline.port, path=f"/file?path={path}").body == b"file body\n"  # FILE
    before = tables_json(inline)["closes"]
    mark = len(inline.read_log())
    assert request(inline.port, path="/t/?op=bad-kind").status == 500
    inline.wait_log(r"app tables broke rule", since=mark)
    assert tables_json(inline)["closes"] >= before + 2, "the body of kind 42 was not closed"


@row("body", "data, len")
def check_body_data(inline):
    assert request(inline.port, path="/").body == PROBE_BODY
    r = request(inline.port, method="POST", path="/echo", body=b"\x00\x01binary\xff")
    assert r.body == b"\x00\x01binary\xff" and r.header("Content-Length") == "9", r


@row("body", "next")
def check_body_next(inline):
    assert request(inline.port, path="/iter?n=4&size=3").body == b"aaabbbcccddd"
    assert request(inline.port, path="/iter?n=0").body == b""


@row("body", "fd, offset, length")
def check_body_file(inline, work):
    path = os.path.join(work, "range.bin")
    data = os.urandom(100000)
    with open(path, "wb") as f:
        f.write(data)
    for offset, length, expected in [(0, -1, data), (10, 20, data[10:30]), (99990, -1, data[99990:]),
                                     (5, 0, b"")]:
        r = request(inline.port, path=f"/file?path={path}&offset={offset}&length={length}")
        assert r.status == 200 and r.body == expected, (offset, length, r.status, len(r.body))


@row("body", "ctx")
def check_body_ctx(inline):
    """Passed to next and close as given; srv never looks at it (a tag that is no valid
    pointer comes back unchanged, and nothing crashed)."""
    before = tables_json(inline)
    assert request(inline.port, path="/t/?op=ctx-tag&kind=bytes").body == b"tagged bytes\n"
    assert request(inline.port, path="/t/?op=ctx-tag&kind=iter").body == b"tagged chunk\n" * 3
    after = tables_json(inline)
    assert after["pid"] == before["pid"], "the worker died"
    assert (after["ctx_ok"] - before["ctx_ok"], after["ctx_bad"] - before["ctx_bad"]) == (2, 0), (before, after)


def conformance_closes(server, prefix=""):
    """(set, closed) of conformance's /closes once every earlier body is closed."""
    deadline = time.time() + 30
    while True:
        words = request(server.port, path=f"{prefix}/closes").body.split()
        got = (int(words[1]), int(words[3]))
        if got[0] == got[1] or time.time() > deadline:
            return got
        time.sleep(0.1)


@row("body", "close")
def check_body_close(inline, work):
    """Exactly once when srv is done with the body, whatever happened to it."""
    path = os.path.join(work, "close.txt")
    with open(path, "wb") as f:
        f.write(b"x" * 1000)
    set0, closed0 = conformance_closes(inline)
    assert set0 == closed0, (set0, closed0)
    targets = ["/echo", "/iter", f"/file?path={path}", "/error/twice", "/error/return", "/error/content-length",
               "/error/no-start-response", "/error/iter", "/error/bad-header"]
    for t in targets:
        try:
            request(inline.port, path=t)
        except (EOFError, ConnectionResetError):
            pass  # /error/iter is aborted
    c = Conn(inline.port)
    c.send("GET /big?mb=512 HTTP/1.1\r\nHost: x\r\n\r\n")  # a client that goes away mid-body
    c.sock.recv(65536)
    c.close()
    set1, closed1 = conformance_closes(inline)
    # +1: the first /closes response's own body
    assert (set1 - set0, closed1 - closed0) == (len(targets) + 2, len(targets) + 2), (set0, closed0, set1, closed1)
    assert request(inline.port, path="/write").body == b"first\nsecond\nthird\n"  # no close at all: fine


# =======================================================================================
# The descriptor
# =======================================================================================

def report(refusals, name):
    return refusals["reports"][refusals["files"][name]]


@row("descriptor", "magic")
def check_magic(cells, layout, refusals):
    assert layout["magic"] == int(re.search(r"Offset (\d+)", cells[1]).group(1)) == 0
    assert descriptor_bytes(plugin("tables"))[1][0] == layout["SRV_GATEWAY_MAGIC"]
    assert b"SRVG" == struct.pack("<I", layout["SRV_GATEWAY_MAGIC"])
    r = report(refusals, "badmagic")
    assert r["reason"] == "bad-magic" and "0x47565253" in r["error"], r


@row("descriptor", "abi_major")
def check_abi_major(cells, layout, refusals):
    assert layout["abi_major"] == int(re.search(r"Offset (\d+)", cells[1]).group(1))
    assert descriptor_bytes(plugin("tables"))[1][1] == layout["SRV_ABI_MAJOR"]
    r = report(refusals, "abimajor")
    assert r["reason"] == "abi-major-mismatch" and "ABI 2.x" in r["error"], r


@row("descriptor", "abi_minor")
def check_abi_minor(cells, layout, refusals):
    """The minor the app needs, SRV_ABI_MINOR_REQUIRED (0 by default): srv refuses a newer
    one, accepts an equal one."""
    assert layout["abi_minor"] == int(re.search(r"Offset (\d+)", cells[1]).group(1))
    assert layout["SRV_ABI_MINOR_REQUIRED"] == 0
    assert descriptor_bytes(plugin("tables"))[1][2] == 0
    r = report(refusals, "abiminor")
    assert r["reason"] == "abi-minor-too-new" and "1.99" in r["error"], r
    assert "/valid=valid" in refusals["log"], "the ABI 1.0 plugin beside them was not served"


@row("descriptor", "descriptor_size")
def check_descriptor_size(cells, layout, refusals):
    assert layout["descriptor_size"] == int(re.search(r"Offset (\d+)", cells[1]).group(1))
    assert descriptor_bytes(plugin("tables"))[1][3] == layout["sizeof_descriptor"] == layout["SRV_DESCRIPTOR_SIZE_1_0"]
    r = report(refusals, "toosmall")
    assert r["reason"] == "descriptor-too-small" and "8 bytes" in r["error"] and "56" in r["error"], r


@pytest.fixture(scope="module")
def odd_sizes(work, module_servers):
    """libtables.so with environ_size and body_size patched to 1 in its descriptor."""
    path = patched_copy(plugin("tables"), os.path.join(work, "liboddsizes.so"), environ_size=1, body_size=1)
    check = json.loads(subprocess.run([SRV, "check", "--json", path], capture_output=True, text=True,
                                      timeout=60).stdout)[0]
    s = module_servers(["--app", path], workers=1)
    return check, s


@row("descriptor", "environ_size", "body_size")
def check_informational_sizes(odd_sizes):
    """Informational: a descriptor that records other sizes is accepted and served, and
    srv still hands its own structs."""
    check, s = odd_sizes
    assert check["valid"] is True, check
    sizes = json.loads(request(s.port, path="/?op=sizes").body)
    assert (sizes["environ"], sizes["body"]) == (sizes["environ_compiled"], sizes["body_compiled"]), sizes


@row("descriptor", "flags")
def check_flags(layout, threads):
    """SRV_FLAG_* bits: SRV_FLAG_THREAD_SAFE is what srv reads (srv check, multithread)."""
    assert layout["SRV_FLAG_THREAD_SAFE"] == 1
    out = json.loads(subprocess.run([SRV, "check", "--json", plugin("tables"), plugin("tablesserial")],
                                    capture_output=True, text=True, timeout=60).stdout)
    assert [r["threadSafe"] for r in out] == [True, False], out
    assert descriptor_bytes(plugin("tables"))[1][6] == 1 and descriptor_bytes(plugin("tablesserial"))[1][6] == 0
    assert json.loads(request(threads.port, path="/t/?op=sizes").body)["multithread"] == 1


@row("descriptor", "name")
def check_name(inline):
    """Used in logs (app NAME ...), srv status and wsgi.errors lines; NULL: the file name."""
    mark = len(inline.read_log())
    assert request(inline.port, path="/t/?op=twice").status == 500
    assert request(inline.port, path="/anon/?op=twice").status == 500
    inline.wait_log(r"app tables: tables: twice", since=mark)
    inline.wait_log(r"app tables broke rule 'start_response called twice'", since=mark)
    inline.wait_log(r"app libtablesanon\.so: tables: twice", since=mark)
    inline.wait_log(r"app libtablesanon\.so broke rule 'start_response called twice'", since=mark)
    names = {a["mount"]: a.get("name") for a in status(inline)["apps"]}
    assert names.get("/t") == "tables" and names.get("/") == "conformance", names
    assert "tablesanon" in (names.get("/anon") or ""), names
    out = json.loads(subprocess.run([SRV, "check", "--json", plugin("tablesanon")], capture_output=True, text=True,
                                    timeout=60).stdout)[0]
    assert out["name"] == "libtablesanon.so", out


@row("descriptor", "version")
def check_version(inline):
    """Shown by srv check and srv status; NULL means none."""
    out = json.loads(subprocess.run([SRV, "check", "--json", plugin("tables"), plugin("tablesanon")],
                                    capture_output=True, text=True, timeout=60).stdout)
    assert out[0]["version"] == "1.0.0" and not out[1].get("version"), out
    versions = {a["mount"]: a.get("version") for a in status(inline)["apps"]}
    assert versions.get("/t") == "1.0.0" and not versions.get("/anon"), versions


@row("descriptor", "load")
def check_load_hook(inline):
    """Optional: hello has none and is served; tables' and conformance's run once per
    worker, before any request."""
    assert request(inline.port, path="/hello/").body == b"Hello, World!\n"
    stats = tables_json(inline)
    assert stats["load_calls"] == 1 and stats["load_before_first_call"] is True, stats
    pid = environ_of(inline.port)["extensions"]["srv.worker_pid"]
    assert request(inline.port, path="/loaded").body.decode().startswith(f"pid {pid} mount '' abi 1.0 ")


@row("descriptor", "unload")
def check_unload_hook(unload_run):
    """Optional; called once when a worker exits gracefully, not when it is killed."""
    assert unload_run["rc"] == 0, unload_run["log"]
    assert sorted(unload_run["lines"]) == sorted(f"unload {p}" for p in unload_run["final"]), unload_run
    assert f"unload {unload_run['killed']}" not in unload_run["lines"]


# =======================================================================================
# Lifetimes
# =======================================================================================

def iter_environ_lines(body, query, path_info, tag, data):
    """The lines tables' op=iter-environ built in `next`; asserts each is the request's
    own; returns the request id they carry."""
    lines = body.split(b"\n")[:-1]
    ids = set()
    for i, line in enumerate(lines):
        m = re.match(rb"(\d+) q=(\S*) p=(\S*) tag=(\S*) id=(\S+) byte=(.) ", line)
        assert m and not line[m.end():].strip(b"."), line[:200]
        expected_byte = data[i:i + 1] if i < len(data) else b"-"
        assert (int(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(6)) == \
            (i, query.encode(), path_info.encode(), tag.encode(), expected_byte), line[:200]
        ids.add(m.group(5))
    assert len(ids) == 1, ids
    return lines, ids.pop()


@row("lifetimes", "environ and everything reachable from it: the srv_str strings, headers, extensions, input, errors")
def check_environ_lifetime(inline):
    """Valid until close: four streams whose every chunk `next` builds from environ, its
    strings, headers, extensions and input, interleaved on one event loop (whose request
    slots other requests reuse meanwhile), each stay their own request's."""
    n, pad = 48, 16384
    socks, expected = [], []
    for k in range(4):
        query = f"op=iter-environ&n={n}&pad={pad}&k={k}"
        data = f"B{k}xyz".encode()
        s = socket.create_connection(("127.0.0.1", inline.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(f"POST /t/p{k}?{query} HTTP/1.1\r\nHost: x\r\nX-Tag: tag{k}\r\nContent-Length: {len(data)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + data)
        socks.append(s)
        expected.append((query, f"/p{k}", f"tag{k}", data))
    got = [b""] * 4
    open_socks = set(range(4))
    while open_socks:
        readable, _, _ = select.select([socks[k] for k in open_socks], [], [], 30)
        assert readable, "no stream made progress for 30 s"
        for s in readable:
            k = socks.index(s)
            chunk = s.recv(4096)  # small reads: the four streams interleave
            if chunk:
                got[k] += chunk
            else:
                open_socks.discard(k)
                s.close()
    ids = set()
    for k in range(4):
        line, _, body, complete, _ = parse_response(got[k])
        assert line.startswith("HTTP/1.1 200") and complete, got[k][:200]
        lines, rid = iter_environ_lines(body, *expected[k])
        assert len(lines) == n
        ids.add(rid)
    assert len(ids) == 4, ids


@row("lifetimes", "input->read, errors->write")
def check_callables_lifetime(inline):
    """Same as environ: read and errors->write from `next`, after srv_gateway_app
    returned, act on the request."""
    mark = len(inline.read_log())
    data = b"abcdefghij"
    r = request(inline.port, method="POST", path="/t/x?op=iter-environ&n=12", body=data,
                headers={"X-Tag": "late"})
    lines, _ = iter_environ_lines(r.body, "op=iter-environ&n=12", "/x", "late", data)
    assert len(lines) == 12
    inline.wait_log(r"app tables: tables: next saw its environ", since=mark)


@row("lifetimes", "start_response")
def check_start_response_lifetime(inline, threads):
    """Until srv_gateway_app returns: called from a thread the app waits for, it works."""
    for server, path in [(inline, "/thread"), (threads, "/c/thread")]:
        r = request(server.port, method="POST", path=path, body=b"payload")
        assert (r.status, r.body) == (200, b"thread:payload"), r


@row("lifetimes", "write (returned by start_response)")
def check_write_lifetime(inline, threads):
    assert request(inline.port, path="/write").body == b"first\nsecond\nthird\n"
    assert request(threads.port, path="/c/write").body == b"first\nsecond\nthird\n"
    r = request(threads.port, method="POST", path="/c/thread", body=b"w")
    assert r.body == b"thread:w", r


@row("lifetimes", "status, headers and their strings passed to start_response")
def check_status_headers_copied(inline, threads):
    """srv copies them: an app that scribbles on its buffers right after start_response
    still gets its original status and headers sent."""
    for server in (inline, threads):
        got = exchange(b"GET /t/?op=overwrite-headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       port=server.port)
        line, headers, body, _, _ = parse_response(got)
        assert line == "HTTP/1.1 201 Original", got[:300]
        assert headers.get("x-original") == ["kept-value"] and headers.get("content-type") == ["text/plain"], headers
        assert body == b"headers were copied\n"


@row("lifetimes", "exc_info and exc_info->message")
def check_exc_info_copied(inline):
    mark = len(inline.read_log())
    r = request(inline.port, path="/t/?op=overwrite-exc-info")
    assert (r.status, r.body) == (503, b"replaced\n"), r
    inline.wait_log(r"exc_info message as given during the call", since=mark)
    assert "XXXXXXXX" not in log_since(inline, mark)


@row("lifetimes", "data passed to write")
def check_write_data_copied(inline, threads):
    """srv has taken the bytes when write returns: the app reuses its buffer at once."""
    kb = 3072
    expected = b"one\ntwo\n" + (bytes(range(97, 123)) * (kb * 1024 // 26 + 1))[:kb * 1024]
    for server in (inline, threads):
        r = request(server.port, path=f"/t/?op=overwrite-write&kb={kb}")
        assert r.status == 200 and r.body == expected, (len(r.body), r.body[:40])


@row("lifetimes", "body (the srv_body itself)")
def check_body_struct_copied(inline):
    """srv copies the srv_body: while one response streams, later requests get fresh
    zeroed bodies and fill them otherwise, and the stream is unaffected."""
    n, pad = 1024, 16384  # 16 MiB: more than the sockets' buffers hold, so it streams throughout
    query = f"op=iter-environ&n={n}&pad={pad}"
    a = socket.create_connection(("127.0.0.1", inline.port), timeout=30)
    try:
        a.sendall(f"GET /t/s?{query} HTTP/1.1\r\nHost: x\r\nX-Tag: A\r\nConnection: close\r\n\r\n".encode())
        got = a.recv(4096)
        for _ in range(3):
            assert request(inline.port, path="/body-zeroed").body.startswith(b"zeroed ")
            assert json.loads(request(inline.port, path="/t/?op=sizes").body)["body_kind"] == 0
            assert request(inline.port, path="/t/?op=ctx-tag&kind=iter").body == b"tagged chunk\n" * 3
            assert request(inline.port, path="/iter?n=2&size=4").body == b"aaaabbbb"
        parts = [got]
        while True:
            chunk = a.recv(1 << 20)
            if not chunk:
                break
            parts.append(chunk)
        got = b"".join(parts)
    finally:
        a.close()
    _, _, body, complete, _ = parse_response(got)
    assert complete
    lines, _ = iter_environ_lines(body, query, "/s", "A", b"")
    assert len(lines) == n


@row("lifetimes", "body->data (bytes)")
def check_bytes_until_close(inline):
    """Valid until close: a body larger than the sockets' buffers, whose close zeroes it,
    reaches a client that pauses before reading it intact."""
    kb = 32768
    before = tables_json(inline)["closes"]
    s = socket.create_connection(("127.0.0.1", inline.port), timeout=30)
    try:
        s.sendall(f"GET /t/?op=close-scribbles&kb={kb} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        got = s.recv(4096)
        time.sleep(0.5)  # srv fills the buffers and must keep the rest of the body
        parts = [got]
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            parts.append(chunk)
        got = b"".join(parts)
    finally:
        s.close()
    _, _, body, complete, _ = parse_response(got)
    assert complete and body == (bytes(range(251)) * (kb * 1024 // 251 + 1))[:kb * 1024], len(body)
    assert tables_json(inline)["closes"] >= before + 2


@row("lifetimes", "A chunk returned by next")
def check_chunk_until_next(inline, threads):
    """conformance's iterator rewrites one buffer at every call of next: each chunk
    arrives as it was before the next call."""
    expected = b"".join(bytes([97 + i % 26]) * 65536 for i in range(40))
    for server, prefix in [(inline, ""), (threads, "/c")]:
        r = request(server.port, path=f"{prefix}/iter?n=40&size=65536")
        assert r.body == expected, (len(r.body), r.body[:10])


@row("lifetimes", "body->fd")
def check_fd_until_close(inline, work):
    """Open until close; srv never closes it: the fd is still open when close runs."""
    path = os.path.join(work, "fd.bin")
    data = os.urandom(3 << 20)
    with open(path, "wb") as f:
        f.write(data)
    before = tables_json(inline)
    r = request(inline.port, path=f"/t/?op=file&path={path}")
    assert r.status == 200 and r.body == data
    assert request(inline.port, path=f"/t/?op=file&path={path}&offset=7&length=9").body == data[7:16]
    after = tables_json(inline)
    assert after["fd_open_at_close"] - before["fd_open_at_close"] == 2, (before, after)
    assert after["fd_closed_at_close"] == before["fd_closed_at_close"], (before, after)


@row("lifetimes", "body->ctx")
def check_ctx_until_close(inline):
    """Until close, which releases it: close gets the app's ctx intact, once."""
    before = tables_json(inline)
    request(inline.port, path="/t/?op=iter-environ&n=3")
    request(inline.port, path="/t/?op=ctx-tag&kind=iter")
    after = tables_json(inline)
    assert (after["ctx_ok"] - before["ctx_ok"], after["ctx_bad"] - before["ctx_bad"]) == (2, 0), (before, after)
    assert after["closes"] - before["closes"] == 3, (before, after)  # + the first stats body


@row("lifetimes", "srv_server_info and its strings")
def check_server_info(inline, threads):
    """Valid during load: what the hook copied from it is what srv described."""
    for server, prefix, mount in [(inline, "", ""), (threads, "/c", "/c")]:
        pid = environ_of(server.port, f"GET {prefix}/environ HTTP/1.1\r\nHost: x\r\n")["extensions"]["srv.worker_pid"]
        loaded = request(server.port, path=f"{prefix}/loaded").body.decode()
        assert loaded == f"pid {pid} mount '{mount}' abi 1.0 server srv/0.1.0\n", loaded


@row("lifetimes", "error buffer of load")
def check_load_error_buffer(refusals):
    """Only during the call: srv keeps what the hook wrote before it returned."""
    r = report(refusals, "loadfail")
    assert r["reason"] == "load-hook-failed", r
    assert "the load hook of app 'loadfail' failed: cannot open database /nonexistent/blog.db" in r["error"], r
    assert re.search(r"libloadfail\.so: the load hook of app 'loadfail' failed: cannot open database "
                     r"/nonexistent/blog\.db", refusals["log"])


@row("lifetimes", "The descriptor, its name and version strings, its hooks")
def check_descriptor_forever(inline, unload_run):
    """Forever: long after load, srv still reads the name and version and calls the
    unload hook at exit."""
    for _ in range(20):
        request(inline.port, path="/counter")
    mark = len(inline.read_log())
    request(inline.port, path="/errors")
    inline.wait_log(r"app conformance: conformance: hello", since=mark)
    apps = {a["mount"]: (a.get("name"), a.get("version")) for a in status(inline)["apps"]}
    assert apps["/"] == ("conformance", "1.0.0") and apps["/t"] == ("tables", "1.0.0"), apps
    assert len(unload_run["lines"]) == 2, unload_run


@row("lifetimes", "The plugin's code and static data")
def check_never_dlclosed(inline, reloaded):
    """Until the worker exits: static data keeps counting in the same process, the
    snapshot stays mapped, and a reload maps a new snapshot in new workers."""
    first = request(inline.port, path="/counter").body.split()
    for _ in range(5):
        request(inline.port, path="/t/?op=sizes")
    second = request(inline.port, path="/counter").body.split()
    assert first[1] == second[1] and int(second[3]) == int(first[3]) + 1, (first, second)
    pid = int(first[1])
    h = sha256(plugin("conformance"))[:12]
    assert f"/memfd:srv-{h}-libconformance.so (deleted)" in mapped_files(pid), sorted(mapped_files(pid))
    h1 = reloaded["before"]["extensions"]["srv.app_hash"][:12]
    h2 = reloaded["after"]["extensions"]["srv.app_hash"][:12]
    before = [p for p in reloaded["maps_before"] if p.startswith("/memfd:srv-") and "-libapp.so" in p]
    after = [p for p in reloaded["maps_after"] if p.startswith("/memfd:srv-") and "-libapp.so" in p]
    assert before == [f"/memfd:srv-{h1}-libapp.so (deleted)"], before
    assert after == [f"/memfd:srv-{h2}-libapp.so (deleted)"] and h1 != h2, after


# =======================================================================================
# Threads
# =======================================================================================

@row("threads", "load")
def check_load_thread(inline, threads):
    """Once per worker process, before any request, on one thread."""
    for server in (inline, threads):
        for _ in range(3):
            request(server.port, path="/t/?op=sizes")
        stats = tables_json(server)
        assert stats["load_calls"] == 1 and stats["load_before_first_call"] is True and stats["load_tid"] > 0, stats
        assert stats["pid"] in server.worker_pids(), stats


def sleeps(server, count, ms, prefix="/t"):
    return parallel([lambda: request(server.port, path=f"{prefix}/?op=sleep&ms={ms}") for _ in range(count)])


@row("threads", "srv_gateway_app")
def check_app_thread(inline, threads, module_servers):
    """The event-loop thread, one call at a time; with SRV_FLAG_THREAD_SAFE and
    --threads N, N threads at once; without the flag, still the event loop."""
    # No --threads: the event loop, the thread next and close run on too.
    request(inline.port, path="/t/?op=reset")
    sleeps(inline, 3, 300)
    request(inline.port, path="/t/?op=iter-environ&n=2")
    stats = tables_json(inline)
    assert stats["max_concurrent"] == 1, stats
    assert len(stats["app_tids"]) == 1 and set(stats["next_tids"]) == set(stats["app_tids"]), stats
    # Thread-safe with --threads 2: two at once on pool threads, never three.
    request(threads.port, path="/t/?op=reset")
    sleeps(threads, 3, 1500)
    request(threads.port, path="/t/?op=iter-environ&n=2")
    stats = tables_json(threads)
    assert stats["max_concurrent"] == 2, stats
    assert 1 <= len(stats["app_tids"]) <= 2 and not set(stats["app_tids"]) & set(stats["next_tids"]), stats
    # Not thread-safe, with --threads 2: the worker's event-loop thread.
    try:
        serial = module_servers(["--app", plugin("tablesserial"), "--threads", "2"], workers=1)
    except AssertionError as e:
        named = re.findall(r"\[([a-z-]+)\]\s*$", str(e), re.M)
        undocumented = [n for n in named if n not in SPEC_ROWS[REASONS]]
        pytest.fail("srv refused to serve an application without SRV_FLAG_THREAD_SAFE under --threads 2; the "
                    "Threads table says srv then calls it on the worker's event-loop thread (and environ's "
                    "multithread row: 0 for it)"
                    + (f"; the reason it names, {undocumented}, is not one of GATEWAY.md's Loading reasons"
                       if undocumented else "") + f":\n{str(e)[-400:]}")
    sleeps(serial, 3, 300, prefix="")
    request(serial.port, path="/?op=iter-environ&n=2")
    stats = tables_json(serial, prefix="")
    assert stats["max_concurrent"] == 1 and set(stats["app_tids"]) == set(stats["next_tids"]), stats
    assert json.loads(request(serial.port, path="/?op=sizes").body)["multithread"] == 0


@row("threads", "start_response, write")
def check_start_response_any_thread(inline, threads):
    for server, path in [(inline, "/thread"), (threads, "/c/thread")]:
        r = request(server.port, method="POST", path=path, body=b"from another thread")
        assert (r.status, r.body) == (200, b"thread:from another thread"), r


@row("threads", "input->read, errors->write")
def check_read_errors_any_thread(inline, threads):
    """From a thread the app waits for (/thread), and from `next` on the event loop,
    while environ is valid."""
    for server, prefix in [(inline, ""), (threads, "/c")]:
        mark = len(server.read_log())
        r = request(server.port, method="POST", path=f"{prefix}/thread", body=b"abc")
        assert r.body == b"thread:abc", r
        server.wait_log(r"app conformance: from thread", since=mark)
    mark = len(threads.read_log())
    r = request(threads.port, method="POST", path="/t/y?op=iter-environ&n=4", body=b"qr", headers={"X-Tag": "T"})
    iter_environ_lines(r.body, "op=iter-environ&n=4", "/y", "T", b"qr")
    threads.wait_log(r"app tables: tables: next saw its environ", since=mark)


@row("threads", "next, close")
def check_next_close_thread(threads):
    """The event loop, not the app's pool thread, while other requests' srv_gateway_app
    runs on other threads."""
    request(threads.port, path="/t/?op=reset")
    a = socket.create_connection(("127.0.0.1", threads.port), timeout=30)
    try:
        a.sendall(b"GET /t/?op=sleep&ms=5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # The sleep is running once a stats request beside it (the reset made the maximum
        # 1) counts two calls at once.
        wait_until(lambda: tables_json(threads)["max_concurrent"] >= 2, timeout=30,
                   message="the sleeping request to be in srv_gateway_app")
        r = request(threads.port, path="/t/z?op=iter-environ&n=200&pad=2048", headers={"X-Tag": "during"})
        lines, _ = iter_environ_lines(r.body, "op=iter-environ&n=200&pad=2048", "/z", "during", b"")
        assert len(lines) == 200
        still_sleeping = not select.select([a], [], [], 0)[0]
        got = b""
        while True:
            chunk = a.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        a.close()
    assert got.startswith(b"HTTP/1.1 200"), got
    assert still_sleeping, "the stream finished only after the sleeping request: next did not run beside it"
    stats = tables_json(threads)
    assert len(stats["next_tids"]) == 1 and set(stats["close_tids"]) == set(stats["next_tids"]), stats
    assert not set(stats["next_tids"]) & set(stats["app_tids"]), stats


@row("threads", "unload")
def check_unload_thread(unload_run):
    counts = {}
    for line in unload_run["lines"]:
        counts[line] = counts.get(line, 0) + 1
    assert counts == {f"unload {p}": 1 for p in unload_run["final"]}, unload_run


# =======================================================================================
# Error handling
# =======================================================================================

def assert_rule(server, mark, app, rule):
    server.wait_log(rf"app {re.escape(app)} broke rule '{re.escape(rule)}", since=mark)


@row("errors", "srv_gateway_app returns SRV_OK without having called start_response.")
def check_no_start_response(cells, inline):
    mark = len(inline.read_log())
    assert request(inline.port, path="/error/no-start-response").status == 500
    assert_rule(inline, mark, "conformance", rule_of(cells))


@row("errors", "start_response called a second time without exc_info.")
def check_twice(cells, inline):
    mark = len(inline.read_log())
    r = request(inline.port, path="/t/?op=twice")
    assert r.status == 500 and r.body == b"Internal Server Error\n", r
    inline.wait_log(r"tables: twice: the second start_response returned NULL", since=mark)
    assert_rule(inline, mark, "tables", rule_of(cells))
    mark = len(inline.read_log())
    assert_aborted(inline, "/t/?op=twice-after-commit", b"partial")
    inline.wait_log(r"tables: twice-after-commit: the second start_response returned NULL", since=mark)
    assert_rule(inline, mark, "tables", rule_of(cells))


@row("errors", "start_response with exc_info before the response is committed.")
def check_exc_info_before_commit(inline):
    mark = len(inline.read_log())
    r = request(inline.port, path="/exc-info")
    assert (r.status, r.body) == (503, b"replaced\n"), r
    inline.wait_log(r"recovering", since=mark)
    assert "broke rule" not in log_since(inline, mark)
    r = request(inline.port, path="/error/empty-write-then-exc-info")
    assert (r.status, r.body) == (503, b"replaced\n"), r


@row("errors", "start_response (with exc_info) after the commit.")
def check_exc_info_after_commit(cells, inline):
    mark = len(inline.read_log())
    assert_aborted(inline, "/t/?op=exc-after-commit", b"partial")
    inline.wait_log(r"tables: exc-after-commit: start_response with exc_info returned NULL", since=mark)
    assert_rule(inline, mark, "tables", rule_of(cells))
    assert_aborted(inline, "/error/after-body", b"partial")


@row("errors", "write called before start_response succeeded for the request.")
def check_write_before_start_response(cells, inline):
    """An app that kept `write` from an earlier request (its bug, on purpose) and calls
    it before this request's start_response: SRV_ERROR, and a 500."""
    assert request(inline.port, path="/t/?op=keep-write").body == b"kept\n"
    mark = len(inline.read_log())
    r = request(inline.port, path="/t/?op=stale-write")
    assert r.status == 500, r
    inline.wait_log(r"tables: stale-write: write before start_response returned SRV_ERROR", since=mark)
    assert_rule(inline, mark, "tables", rule_of(cells))


@row("errors", "srv_gateway_app returns SRV_ERROR.")
def check_app_returns_error(cells, inline):
    mark = len(inline.read_log())
    assert request(inline.port, path="/error/return").status == 500
    inline.wait_log(re.escape(rule_of(cells)), since=mark)
    assert_aborted(inline, "/t/?op=error-after-commit", b"partial")


@row("errors", "The iterator's next returns SRV_ERROR.")
def check_iterator_error(inline):
    assert_aborted(inline, "/error/iter", b"ok")


@row("errors", "input->read past the end of the body.")
def check_read_past_end(inline):
    start = time.time()
    for body in [b"", b"x" * 10000]:
        r = request(inline.port, method="POST", path="/read-past", body=body)
        assert (r.status, r.body) == (200, f"read {len(body)} bytes, then 0 0 0\n".encode()), r
    assert time.time() - start < 10, "reading past the end blocked"


@row("errors", "The application's Content-Length does not match the body.")
def check_content_length_mismatch(cells, inline, work):
    """Bytes and file bodies: 500 before the commit; after write, or an iterator: what srv
    has, then an abort; HEAD with no body: not checked."""
    mark = len(inline.read_log())
    assert request(inline.port, path="/error/content-length").status == 500
    assert_rule(inline, mark, "conformance", rule_of(cells))
    path = os.path.join(work, "cl.bin")
    with open(path, "wb") as f:
        f.write(b"0123456789")
    assert request(inline.port, path=f"/t/?op=file&path={path}&cl=20").status == 500
    assert request(inline.port, path=f"/t/?op=file&path={path}&cl=10").body == b"0123456789"
    assert_aborted(inline, "/t/?op=write-cl-mismatch", b"short")
    got = exchange(b"GET /error/iter-too-long HTTP/1.1\r\nHost: x\r\n\r\n" + PROBE, port=inline.port)
    _, headers, body, _, rest = parse_response(got)
    assert headers["content-length"] == ["7"] and b"aaaaabb".startswith(body) and rest == b"", got
    assert PROBE_BODY not in got
    c = Conn(inline.port)
    try:
        c.send("HEAD /t/?op=head-cl HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response(head=True)
        assert (r.status, r.header("Content-Length")) == (200, "6"), r
        c.send("GET /t/?op=head-cl HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().body == b"hello\n"
    finally:
        c.close()


@row("errors", "The status is not three digits, a space and a (possibly empty) reason phrase.")
def check_invalid_status(cells, inline):
    for bad in ["abc", "200", "2000 OK", "20x OK", " 200 OK", "200\tOK"]:
        mark = len(inline.read_log())
        r = request(inline.port, path=f"/t/?op=bad-status&status={bad.replace(' ', '%20').replace(chr(9), '%09')}")
        assert r.status == 500, (bad, r)
        inline.wait_log(r"tables: bad-status: start_response returned NULL", since=mark)
        assert_rule(inline, mark, "tables", rule_of(cells))
    for good, line in [("200%20", b"HTTP/1.1 200 "), ("299%20Any%20Reason", b"HTTP/1.1 299 Any Reason")]:
        got = exchange(f"GET /t/?op=bad-status&status={good} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       port=inline.port)
        assert status_line(got) == line and got.endswith(b"never sent\n"), got[:200]


@row("errors", "A header name is not a token, or a name or value contains CR or LF.")
def check_invalid_header(cells, inline):
    for which in ["space", "cr", "lf", "empty"]:
        mark = len(inline.read_log())
        got = exchange(f"GET /t/?op=bad-header&which={which} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       port=inline.port)
        assert status_line(got) == b"HTTP/1.1 500 Internal Server Error" and b"Injected" not in got, got[:300]
        inline.wait_log(rf"tables: bad-header {which}: start_response returned NULL", since=mark)
        assert_rule(inline, mark, "tables", rule_of(cells))


@row("errors", "The application sends Connection, Transfer-Encoding or Keep-Alive.")
def check_hop_by_hop(inline):
    """Not an error: dropped, logged by name, the rest served, the connection srv's."""
    mark = len(inline.read_log())
    c = Conn(inline.port)
    try:
        c.send("GET /error/hop-by-hop HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body, r.header("X-Kept")) == (200, b"hop-by-hop dropped\n", "yes"), r
        assert r.header("Keep-Alive") is None and r.header("Connection") != "close", r
        assert r.header("Transfer-Encoding") is None and r.header("Content-Length") == "19", r
        c.send(PROBE)
        assert c.read_response().body == PROBE_BODY, "the app's Connection: close closed srv's connection"
    finally:
        c.close()
    for name in ["Connection", "Transfer-Encoding", "Keep-Alive"]:
        inline.wait_log(rf"(?m)^.*\bapp conformance\b.*\b{name}\b.*$", since=mark)
    assert "broke rule" not in log_since(inline, mark)


# =======================================================================================
# Loading: the refusal reason names
# =======================================================================================

def check_refusal(cells, refusals):
    """Each refusal has its reason name in JSON output (srv check --json), in the log
    line of the refused application and in srv status; the message names the file."""
    reason = cells[0]
    problems = []
    for name in REFUSED[reason]:
        path = refusals["files"][name]
        r = refusals["reports"][path]
        if not (r["valid"] is False and r.get("reason") == reason and r["error"].startswith(path)):
            problems.append(f"srv check --json on {name}: {r}")
        lines = [l for l in refusals["log"].splitlines() if f"app /{name}: " in l]
        if not any(f"[{reason}]" in l for l in lines):
            problems.append(f"log line for {name} lacks [{reason}]: {lines}")
        err = refusals["appErrors"].get(f"/{name}", "")
        if f"[{reason}]" not in err:
            problems.append(f"srv status appErrors for /{name} lacks [{reason}]: {err!r}")
    assert not problems, "\n".join(problems)


for _reason in REFUSED:
    row(REASONS, _reason)(check_refusal)
