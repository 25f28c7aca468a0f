"""`make install`: srv installed into a prefix runs without the Swift toolchain.

srv ships the Swift runtime it links in PREFIX/lib/srv/swift and finds it through its
RUNPATH ($ORIGIN/../lib/srv/swift); a Swift plugin then shares that one runtime. The tests
install into a temporary prefix they own (`make install INSTALL_DEPS= SRV_INSTALL_BIN=...`
builds nothing, so an unprivileged user can run it against a root-owned build), then:
every Swift library resolves in the prefix, the blog (a Swift plugin) serves with no
process mapping a file of the toolchain, the pkg-config file builds a plugin, and, as
root, srv serves with the toolchain's directory really hidden under an empty tmpfs.

SRV_BIN is the built srv (its ldd output names the toolchain), BLOG_SO the blog plugin.
"""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import conftest
from conftest import ROOT, Server, plugin, request

BLOG_SO = os.environ.get("BLOG_SO", os.path.join(ROOT, ".build", "release", "libblog.so"))
STATIC_DIR = os.path.join(ROOT, "Examples", "blog", "static")
# The Swift runtime's libraries: the standard library, Concurrency and co., Dispatch,
# Foundation and its ICU.
RUNTIME = re.compile(r"^(libswift|lib_swift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime)")
SYSTEM_DIRS = {"/", "/usr", "/usr/local"}


def ldd(path, env=None):
    """{needed library name: resolved path or None} for an ELF file."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True, env=env).stdout
    libs = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m:
            libs[m.group(1)] = m.group(2) if m.group(2).startswith("/") else None
    return libs


def under(path, directory):
    return os.path.realpath(path).startswith(os.path.realpath(directory).rstrip("/") + "/")


def clean_path(toolchain_dirs):
    """PATH without the toolchain: no entry inside it and none that holds a `swift`."""
    keep = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(":")
            if d and not any(under(d, t) or os.path.realpath(d) == os.path.realpath(t) for t in toolchain_dirs)
            and not os.path.exists(os.path.join(d, "swift"))]
    return ":".join(keep + ["/usr/bin", "/bin"])


class Install:
    def __init__(self, prefix, swift_lib, output=""):
        self.prefix = prefix
        self.output = output  # what `make install` printed
        self.srv = os.path.join(prefix, "bin", "srv")
        self.runtime_dir = os.path.join(prefix, "lib", "srv", "swift")
        # The directory libswiftCore.so came from when srv was built, and the toolchain
        # around it (/opt/swift for /opt/swift/usr/lib/swift/linux) unless that is /usr.
        self.swift_lib = os.path.realpath(swift_lib)
        top = os.path.realpath(os.path.join(swift_lib, "..", "..", ".."))
        if self.swift_lib.endswith("/lib/swift/linux") and top not in SYSTEM_DIRS:
            if os.path.basename(top) == "usr" and os.path.dirname(top) not in SYSTEM_DIRS:
                top = os.path.dirname(top)
            self.toolchain = top
        else:
            self.toolchain = self.swift_lib
        self.env = {"PATH": clean_path([self.swift_lib, self.toolchain]), "LANG": "C.UTF-8",
                    "HOME": os.environ.get("HOME", "/tmp")}

    def run(self, *args, **kw):
        """Runs the installed srv in a clean environment (no LD_LIBRARY_PATH, no toolchain)."""
        return subprocess.run([self.srv, *args], capture_output=True, text=True, env=self.env,
                              timeout=60, **kw)


def make_install(prefix, target="install"):
    p = subprocess.run(["make", "--no-print-directory", "-C", ROOT, target, f"PREFIX={prefix}", "DESTDIR=",
                        "INSTALL_DEPS=", f"SRV_INSTALL_BIN={conftest.SRV}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"make {target} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed():
    core = ldd(conftest.SRV).get("libswiftCore.so")
    assert core, f"{conftest.SRV} does not resolve libswiftCore.so: cannot tell which toolchain built it"
    tmp = tempfile.mkdtemp(prefix="srv-install-")
    try:
        p = make_install(os.path.join(tmp, "usr"))
        yield Install(os.path.join(tmp, "usr"), os.path.dirname(core), p.stdout + p.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mapped_files(pid):
    """The files mapped into a process (from /proc/PID/maps)."""
    files = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(parts[5].strip().removesuffix(" (deleted)"))
    return files


def assert_runs_on_installed_runtime(inst, pids):
    """No process maps a file of the toolchain; each maps libswiftCore.so once, from the prefix."""
    core = os.path.realpath(os.path.join(inst.runtime_dir, "libswiftCore.so"))
    for pid in pids:
        files = mapped_files(pid)
        from_toolchain = sorted(f for f in files if under(f, inst.swift_lib) or under(f, inst.toolchain))
        assert not from_toolchain, f"process {pid} maps files of the toolchain: {from_toolchain}"
        cores = sorted(f for f in files if os.path.basename(f) == "libswiftCore.so")
        assert cores == [core], f"process {pid}: libswiftCore.so mapped from {cores}, expected [{core}]"


class InstalledServer(Server):
    """conftest's Server running the installed srv, through `wrapper` (which must exec it)."""

    def __init__(self, inst, args, wrapper, **kw):
        saved = conftest.SRV
        conftest.SRV = inst.srv
        try:
            super().__init__(args, wrapper=wrapper, **kw)
            assert os.path.realpath(f"/proc/{self.proc.pid}/exe") == os.path.realpath(inst.srv), \
                "the master is not the installed srv"
        except BaseException:
            if hasattr(self, "proc"):
                self.stop()
            raise
        finally:
            conftest.SRV = saved


def env_i(variables):
    """A wrapper that runs srv with exactly these environment variables."""
    return ["env", "-i"] + [f"{k}={v}" for k, v in variables.items()]


# --- the installed files ----------------------------------------------------------------

def test_installed_srv_resolves_the_swift_runtime_in_the_prefix(installed):
    libs = ldd(installed.srv, env=installed.env)
    runtime = {name: path for name, path in libs.items() if RUNTIME.match(name)}
    assert "libswiftCore.so" in runtime, libs
    for name, path in sorted(runtime.items()):
        assert path, f"{name} does not resolve: {libs}"
        assert under(path, installed.runtime_dir), f"{name} resolves to {path}, not under {installed.runtime_dir}"
        assert not under(path, installed.swift_lib), f"{name} resolves into the toolchain: {path}"
    rpath = subprocess.run(["patchelf", "--print-rpath", installed.srv], capture_output=True, text=True).stdout.strip()
    assert rpath == "$ORIGIN/../lib/srv/swift", rpath
    # The runtime's own libraries find each other beside themselves, not in the toolchain.
    for name in sorted(os.listdir(installed.runtime_dir)):
        path = os.path.join(installed.runtime_dir, name)
        assert not os.path.islink(path), f"{path} is a symlink, expected a copy"
        rpath = subprocess.run(["patchelf", "--print-rpath", path], capture_output=True, text=True).stdout.strip()
        assert rpath == "$ORIGIN", f"{name}: RUNPATH {rpath!r}"


def test_installed_srv_prints_its_version(installed):
    p = installed.run("--version")
    assert p.returncode == 0, p
    assert re.search(r"\d+\.\d+\.\d+", p.stdout), p.stdout


def test_installed_pkg_config_file_builds_a_plugin(installed, tmp_path):
    """GATEWAY.md's pkg-config command, run as written, after the export line `make install`
    printed for a prefix pkg-config does not search."""
    m = re.search(r"^    export PKG_CONFIG_PATH=(\S+)$", installed.output, re.M)
    assert m and m.group(1) == os.path.join(installed.prefix, "lib", "pkgconfig"), installed.output
    with open(os.path.join(ROOT, "PluginSDK", "GATEWAY.md"), encoding="utf-8") as f:
        documented = [l.strip() for l in f if l.startswith("    cc -std=c99 $(pkg-config --cflags srv-gateway)")]
    assert len(documented) == 1, documented
    shutil.copy(os.path.join(ROOT, "Examples", "hello", "hello.c"), tmp_path / "hello.c")
    built = subprocess.run(["sh", "-c", f"{m.group(0).strip()} && {documented[0]}"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert built.returncode == 0 and (tmp_path / "libhello.so").exists(), built.stderr
    assert installed.run("check", str(tmp_path / "libhello.so")).returncode == 0

    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(installed.prefix, "lib", "pkgconfig"))
    cflags = subprocess.run(["pkg-config", "--cflags", "srv-gateway"], capture_output=True, text=True, env=env)
    assert cflags.returncode == 0, cflags.stderr
    assert cflags.stdout.split() == ["-I" + os.path.join(installed.prefix, "include")], cflags.stdout
    libs = subprocess.run(["pkg-config", "--libs", "srv-gateway"], capture_output=True, text=True, env=env)
    assert libs.stdout.strip() == "", f"a plugin links nothing of srv, got {libs.stdout!r}"
    version = subprocess.run(["pkg-config", "--modversion", "srv-gateway"], capture_output=True, text=True,
                             env=env).stdout.strip()
    assert re.search(rf"(^|[ /]){re.escape(version)}\b", installed.run("--version").stdout), version

    so = str(tmp_path / "libx.so")
    cc = subprocess.run(["cc", "-std=c99", "-shared", "-fPIC", "-fvisibility=hidden", *cflags.stdout.split(),
                         "-o", so, os.path.join(ROOT, "Examples", "hello", "hello.c")],
                        capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    check = installed.run("check", so)
    assert check.returncode == 0, check.stdout + check.stderr


def test_installed_tree_has_the_sdk_headers_docs_and_examples(installed):
    p = installed.prefix
    for rel in ["include/srv/gateway.h", "include/srv/swift_app.h",
                "share/srv/PluginSDK/Package.swift", "share/srv/PluginSDK/C/include/srv/gateway.h",
                "share/srv/PluginSDK/GATEWAY.md", "share/doc/srv/LICENSE", "share/doc/srv/README.md",
                "share/doc/srv/CHANGELOG.md", "share/srv/examples/systemd/srv-blog.service"]:
        assert os.path.isfile(os.path.join(p, rel)), f"{rel} not installed"
    with open(os.path.join(p, "include/srv/gateway.h"), "rb") as a, \
            open(os.path.join(ROOT, "PluginSDK/C/include/srv/gateway.h"), "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(os.path.join(p, "share/srv/PluginSDK/.build"))


def test_uninstall_removes_what_install_put_there():
    tmp = tempfile.mkdtemp(prefix="srv-uninstall-")
    try:
        prefix = os.path.join(tmp, "usr")
        make_install(prefix)
        # Someone else's file in a shared directory stays.
        open(os.path.join(prefix, "lib", "pkgconfig", "other.pc"), "w").close()
        make_install(prefix, "uninstall")
        left = sorted(os.path.relpath(os.path.join(d, f), prefix) for d, _, fs in os.walk(prefix) for f in fs)
        assert left == ["lib/pkgconfig/other.pc"], left
        for gone in ["lib/srv", "share/srv", "share/doc/srv", "include/srv"]:
            assert not os.path.exists(os.path.join(prefix, gone)), f"{gone} left behind"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- serving from the prefix --------------------------------------------------------------

def test_installed_srv_serves_the_blog_without_touching_the_toolchain(installed):
    """The blog is a Swift plugin: it must share the prefix's runtime, and no process of the
    server may map anything from the toolchain's directory."""
    if not os.path.exists(BLOG_SO):
        pytest.fail(f"{BLOG_SO} missing: build the blog (swift build -c release --product blog)")
    tmp = tempfile.mkdtemp(prefix="srv-install-serve-")
    data = os.path.join(tmp, "data")
    os.mkdir(data)
    env = dict(installed.env, BLOG_DATA_DIR=data, BLOG_STATIC_DIR=STATIC_DIR)
    s = None
    try:
        s = InstalledServer(installed, ["--app", BLOG_SO], env_i(env), workers=2, tmp=tmp)
        r = request(s.port, "GET", "/")
        assert r.status == 200, r
        assert b"<html" in r.body.lower(), r
        workers = s.worker_pids()
        assert len(workers) == 2, workers
        assert_runs_on_installed_runtime(installed, [s.proc.pid] + workers)
    finally:
        if s is not None:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.root
def test_installed_srv_serves_with_the_toolchain_hidden(installed):
    """In a mount namespace of its own, an empty tmpfs lies over the toolchain: srv must
    start and serve a C and a Swift plugin from the prefix alone."""
    hide = installed.toolchain
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro,size=4k none "$0"', hide],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs over {hide} in a new mount namespace: {probe.stderr.strip()}")
    tmp = tempfile.mkdtemp(prefix="srv-install-hidden-")
    data = os.path.join(tmp, "data")
    os.mkdir(data)
    args = ["--mount", "/=" + plugin("hello")]
    if os.path.exists(BLOG_SO):
        args += ["--mount", "/blog=" + BLOG_SO]
    env = dict(installed.env, BLOG_DATA_DIR=data, BLOG_STATIC_DIR=STATIC_DIR)
    # unshare and sh exec in turn, so the pid Server holds is srv's master.
    wrapper = ["unshare", "-m", "sh", "-c",
               'mount -t tmpfs -o ro,size=4k none "$0" && exec "$@"', hide] + env_i(env)
    s = None
    try:
        s = InstalledServer(installed, args, wrapper, workers=1, tmp=tmp)
        with open(f"/proc/{s.proc.pid}/mountinfo") as f:
            mounts = [line.split() for line in f]
        assert any(m[4] == hide and "tmpfs" in m[m.index("-") + 1] for m in mounts), \
            f"srv's namespace has no tmpfs on {hide}"
        assert not os.path.exists(f"/proc/{s.proc.pid}/root{installed.swift_lib}/libswiftCore.so"), \
            "the toolchain is still visible to srv"
        r = request(s.port, "GET", "/")
        assert r.status == 200 and r.body == b"Hello, World!\n", r
        if os.path.exists(BLOG_SO):
            r = request(s.port, "GET", "/blog/")
            assert r.status == 200, r
        assert_runs_on_installed_runtime(installed, [s.proc.pid] + s.worker_pids())
    finally:
        if s is not None:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def documented_swift_plugin():
    """GATEWAY.md's complete Swift plugin: {path: text} of each "File `PATH`:" block,
    and the lines of the sh block after it (build, check, serve, curl)."""
    with open(os.path.join(ROOT, "PluginSDK", "GATEWAY.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### A complete Swift plugin"):text.index("### The Swift SDK in brief")]
    files = dict(re.findall(r"^File `([^`]+)`:\n\n```\w*\n(.*?)^```", section, re.M | re.S))
    commands = re.search(r"^```sh\n(.*?)^```", section, re.M | re.S).group(1).splitlines()
    return files, commands


def test_the_documented_swift_plugin_builds_against_the_installed_sdk_and_serves(installed, tmp_path):
    """A new user writes a Swift plugin from GATEWAY.md alone: its files, as written (the
    SDK's path is the installed prefix's), build without fetching anything, `srv check`
    accepts the result (its toolchain stamp matches), and the installed srv serves it with
    the answers the code promises."""
    swift = shutil.which("swift")
    if swift is None:
        pytest.skip("no swift on PATH to build a plugin with")
    files, commands = documented_swift_plugin()
    assert sorted(files) == ["hello/Package.swift", "hello/Sources/Hello/Hello.swift",
                             "hello/Sources/HelloExport/export.c",
                             "hello/Sources/HelloExport/include/HelloExport.h"], sorted(files)
    sdk = os.path.join(installed.prefix, "share", "srv", "PluginSDK")
    for path, content in files.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content.replace("/usr/local/share/srv/PluginSDK", sdk))
    pkg = tmp_path / "hello"
    assert commands[0] == "swift build -c release --product hello", commands
    build = subprocess.run(["sh", "-c", commands[0]], cwd=pkg, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    checkouts = pkg / ".build" / "checkouts"
    assert not (checkouts.exists() and any(checkouts.iterdir())), "the SDK pulled in dependencies"
    so = pkg / ".build" / "release" / "libhello.so"
    assert commands[1] == "srv check .build/release/libhello.so", commands
    out = installed.run("check", str(so))
    assert out.returncode == 0 and "name hello" in out.stdout, out.stdout + out.stderr
    s = InstalledServer(installed, ["--app", str(so)], wrapper=env_i(installed.env), workers=1)
    try:
        assert request(s.port, "GET", "/?name=srv").body == b"Hello, srv!\n"
        assert request(s.port, "GET", "/json").body == b'{"greeting":"Hello","path":"/json"}'
        assert request(s.port, "GET", "/nothing").status == 404
    finally:
        s.stop()
        s.remove_tmp()
