"""`srv check`: validate plugins without serving them (issue "srv check").

Every deliberately broken plugin in build/plugins (Tests/Plugins) must be refused with
exit status 1 and a message that names the file and the specific problem; valid plugins
print their name, version, ABI, thread safety and SHA-256. `--json` gives the same as a
JSON array. Serving a broken plugin fails fast with the same message.
"""
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time

import pytest

from conftest import PLUGINS, SRV, free_port, plugin, request


def check(*args, timeout=30):
    """Runs `srv check ARGS`; returns (exit status, stdout + stderr)."""
    p = subprocess.run([SRV, "check", *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def check_json(*args, timeout=30):
    p = subprocess.run([SRV, "check", "--json", *args], capture_output=True, text=True,
                       timeout=timeout)
    try:
        reports = json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"--json output is not JSON ({e}):\n{p.stdout}\n{p.stderr}")
    return p.returncode, reports


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# The machine libbadmachine.so was patched to: AArch64, or x86-64 on an AArch64 host.
FOREIGN_MACHINE = "x86-64" if platform.machine() in ("aarch64", "arm64") else "AArch64"

# name -> (extra args, distinctive substrings of the message, JSON reason)
BROKEN = {
    "nodescriptor": ([], ["srv_gateway_descriptor"], "missing-descriptor"),
    "noentry": ([], ["srv_gateway_app"], "missing-entry-point"),
    "badmagic": ([], ["magic 0xdeadbeef", "0x47565253"], "bad-magic"),
    "abimajor": ([], ["ABI 2.x", "1.0"], "abi-major-mismatch"),
    "abiminor": ([], ["1.99"], "abi-minor-too-new"),
    "toosmall": ([], ["8 bytes", "56"], "descriptor-too-small"),
    "undefined": ([], ["undefined symbol: srv_test_missing_function"], "undefined-symbols"),
    "loadfail": ([], ["cannot open database /nonexistent/blog.db"], "load-hook-failed"),
    "loadcrash": ([], ["crashed with SIGSEGV"], "crashed"),
    "ctorcrash": ([], ["SIGABRT"], "crashed"),
    "loadhang": (["--timeout", "2"], ["did not finish loading"], "hung"),
    "notelf": ([], ["\\x7fELF"], "not-elf"),
    "elf32": ([], ["32-bit"], "wrong-elf-class"),
    "badmachine": ([], [FOREIGN_MACHINE], "wrong-machine"),
    "relocatable": ([], ["ET_REL"], "not-shared-object"),
    "executable": ([], ["position-independent executable"], "not-shared-object"),
}


# ---------------------------------------------------------------------------------------
# Valid plugins
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,app_name,thread_safe", [
    ("hello", "hello", True),
    ("conformance", "conformance", True),
    ("valid", "valid", False),
])
def test_check_valid_plugin(name, app_name, thread_safe):
    path = plugin(name)
    rc, out = check(path)
    assert rc == 0, out
    assert path in out or os.path.basename(path) in out, out
    assert app_name in out, out
    assert "1.0.0" in out, out            # the application's version
    assert "ABI 1.0" in out, out
    assert ("thread-safe yes" if thread_safe else "thread-safe no") in out, out
    assert sha256(path) in out, out


def test_check_two_valid_plugins():
    rc, out = check(plugin("hello"), plugin("conformance"))
    assert rc == 0, out
    assert "hello" in out and "conformance" in out, out
    assert sha256(plugin("hello")) in out and sha256(plugin("conformance")) in out, out


def test_check_version_of_conformance2():
    """libconformance2.so is the same source built with version 2.0.0."""
    path = os.path.join(PLUGINS, "libconformance2.so")
    if not os.path.exists(path):
        pytest.skip("libconformance2.so not built")
    rc, out = check(path)
    assert rc == 0, out
    assert "2.0.0" in out, out


def test_check_json_valid():
    paths = [plugin("hello"), plugin("conformance"), plugin("valid")]
    rc, reports = check_json(*paths)
    assert rc == 0, reports
    assert isinstance(reports, list) and len(reports) == 3, reports
    for path, r, name, ts in zip(paths, reports, ["hello", "conformance", "valid"],
                                 [True, True, False]):
        assert r["path"] == path, r
        assert r["valid"] is True, r
        assert r["name"] == name, r
        assert r["version"] == "1.0.0", r
        assert r["abi"] == "1.0", r
        assert r["threadSafe"] is ts, r
        assert r["hash"] == sha256(path), r


def test_check_json_prints_paths_as_they_are():
    """JSON allows `\\/`, but a path a person reads or greps is printed with plain slashes."""
    p = subprocess.run([SRV, "check", "--json", plugin("hello")], capture_output=True, text=True, timeout=30)
    assert f'"path" : "{plugin("hello")}"' in p.stdout and "\\/" not in p.stdout, p.stdout


# ---------------------------------------------------------------------------------------
# Broken plugins
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_broken_plugin(name):
    extra, needles, _ = BROKEN[name]
    path = plugin(name)
    start = time.time()
    rc, out = check(*extra, path)
    assert rc == 1, out
    assert path in out, f"message does not name the file:\n{out}"
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    if name == "loadhang":
        assert time.time() - start < 10, "--timeout 2 was not honoured"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_broken_plugin_json(name):
    extra, needles, reason = BROKEN[name]
    path = plugin(name)
    rc, reports = check_json(*extra, path)
    assert rc == 1, reports
    assert len(reports) == 1, reports
    r = reports[0]
    assert r["path"] == path, r
    assert r["valid"] is False, r
    assert r["reason"] == reason, r
    message = r.get("error") or r.get("message") or ""
    assert path in message, r
    for needle in needles:
        assert needle in message, r


def test_check_missing_file(tmp_path):
    path = str(tmp_path / "libmissing.so")
    rc, out = check(path)
    assert rc == 1, out
    assert path in out, out
    assert "no such file" in out, out
    rc, reports = check_json(path)
    assert rc == 1, reports
    assert reports[0]["valid"] is False and reports[0]["reason"] == "missing-file", reports
    assert reports[0]["path"] == path, reports


def test_check_directory_is_not_a_file(tmp_path):
    d = tmp_path / "libdir.so"
    d.mkdir()
    rc, reports = check_json(str(d))
    assert rc == 1, reports
    assert reports[0]["valid"] is False and reports[0]["reason"] == "not-a-file", reports


def test_check_mixed_valid_and_invalid():
    good, bad = plugin("hello"), plugin("badmagic")
    rc, out = check(good, bad)
    assert rc == 1, out
    assert sha256(good) in out, out            # the valid one is still reported
    assert "magic 0xdeadbeef" in out, out
    rc, reports = check_json(good, bad, plugin("conformance"))
    assert rc == 1, reports
    assert [r["valid"] for r in reports] == [True, False, True], reports
    assert [r["path"] for r in reports] == [good, bad, plugin("conformance")], reports
    assert reports[1]["reason"] == "bad-magic", reports


def test_check_crash_does_not_kill_check():
    """A plugin that crashes while loading is checked in a child: the others still run."""
    rc, reports = check_json(plugin("loadcrash"), plugin("ctorcrash"), plugin("hello"))
    assert rc == 1, reports
    assert [r["valid"] for r in reports] == [False, False, True], reports
    assert reports[0]["reason"] == "crashed" and reports[1]["reason"] == "crashed", reports


# ---------------------------------------------------------------------------------------
# Serving a broken plugin
# ---------------------------------------------------------------------------------------

def serve_and_fail(path, tmp_path):
    """Runs `srv --app path`, expecting it to refuse; returns the process and its output."""
    p = subprocess.run([SRV, "--app", path, "-b", f"127.0.0.1:{free_port()}", "-w", "1",
                        "--pid", str(tmp_path / "srv.pid"),
                        "--status-file", str(tmp_path / "status.json")],
                       capture_output=True, text=True, timeout=30)
    return p, p.stdout + p.stderr


@pytest.mark.parametrize("name,needle", [
    ("badmagic", "magic 0xdeadbeef"),
    ("abimajor", "ABI 2.x"),
    ("undefined", "undefined symbol: srv_test_missing_function"),
    ("loadfail", "cannot open database /nonexistent/blog.db"),
    ("notelf", "\\x7fELF"),
])
def test_serve_broken_plugin_exits(name, needle, tmp_path):
    path = plugin(name)
    start = time.time()
    p, out = serve_and_fail(path, tmp_path)
    assert p.returncode != 0, out
    assert time.time() - start < 10, f"srv took {time.time() - start:.1f}s to give up"
    assert needle in out, out
    assert path in out, out
    assert out.count(needle) == 1, f"the refusal is said once:\n{out}"
    # A file that is no ELF shared object is bad input found before srv binds (64); the
    # others are found by loading, in a worker (1).
    assert p.returncode == (64 if name == "notelf" else 1), out


@pytest.mark.parametrize("kind", ["missing", "notelf"])
def test_serve_refuses_a_file_that_is_no_plugin_before_it_binds(kind, tmp_path):
    """A missing file, or one that is no ELF shared object, stops srv before it binds or
    starts a worker: one line, no 'listening', exit status 64 (bad input, as a missing
    --apps-dir)."""
    path = str(tmp_path / "libnothere.so") if kind == "missing" else plugin("notelf")
    p, out = serve_and_fail(path, tmp_path)
    assert p.returncode == 64, out
    assert ("no such file" if kind == "missing" else "\\x7fELF") in out and path in out, out
    assert "listening" not in out and "worker" not in out, out
    assert len([l for l in out.splitlines() if path in l]) == 1, out


# ---------------------------------------------------------------------------------------
# Who may put code into srv (StrictModes)
# ---------------------------------------------------------------------------------------

def test_a_plugin_others_may_write_is_refused_unless_insecure_plugins(tmp_path, serve):
    """A plugin any local user can write would run their code as srv's user (as root, for a
    root srv) at the next HUP: srv check and srv refuse it, naming the path, the mode and
    the one flag that overrides."""
    app = tmp_path / "libapp.so"
    shutil.copy(plugin("hello"), app)
    os.chmod(app, 0o666)
    rc, out = check(str(app))
    assert rc == 1 and f"{app}: it is mode 666: writable by anyone" in out and "--insecure-plugins" in out, out
    rc, reports = check_json(str(app))
    assert reports[0]["reason"] == "writable-by-others", reports
    p, out = serve_and_fail(str(app), tmp_path)
    assert p.returncode == 64 and "[writable-by-others]" in out and f"chmod go-w {app}" in out, out
    assert check("--insecure-plugins", str(app))[0] == 0
    s = serve(["--app", str(app), "--insecure-plugins"])
    assert request(s.port).status == 200


def test_a_plugin_under_a_directory_others_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    (shared / "apps").mkdir(parents=True)
    os.chmod(shared, 0o777)
    app = shared / "apps" / "libapp.so"
    shutil.copy(plugin("hello"), app)
    os.chmod(app, 0o644)
    rc, out = check(str(app))
    assert rc == 1 and f"{shared} is mode 777: writable by anyone" in out, out


def test_an_apps_dir_others_may_write_is_refused(tmp_path):
    apps = tmp_path / "apps"
    apps.mkdir()
    os.chmod(apps, 0o777)
    p = subprocess.run([SRV, "--apps-dir", str(apps), "-b", f"127.0.0.1:{free_port()}", "--check-config"],
                       capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and f"apps-dir {apps}: it is mode 777: writable by anyone" in out, out
    assert "--insecure-plugins" in out, out
