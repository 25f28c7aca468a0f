"""The blog example (Examples/blog): a Swift plugin over SQLite, served by srv with several
workers. HTML form and JSON API, validation, escaping, limits, the stylesheet, concurrent
writes through several workers, and data that survives a HUP reload.

BLOG_SO names the plugin (default .build/release/libblog.so).
"""
import json
import os
import re
import signal
import tempfile
import threading
import urllib.parse

import pytest

from conftest import ROOT, request

BLOG_SO = os.environ.get("BLOG_SO", os.path.join(ROOT, ".build", "release", "libblog.so"))
STATIC_DIR = os.path.join(ROOT, "Examples", "blog", "static")


@pytest.fixture
def blog(serve, tmp_path):
    """A blog on 3 workers with its own data directory (under the test's tmp_path, which
    pytest removes); returns the Server."""
    if not os.path.exists(BLOG_SO):
        pytest.fail(f"{BLOG_SO} missing: build the blog (swift build -c release --product blog)")

    def start(workers=3, extra_args=(), data_dir=None, app_args=None):
        data = data_dir or tempfile.mkdtemp(prefix="data-", dir=tmp_path)
        s = serve((app_args or ["--app", BLOG_SO]) + list(extra_args), workers=workers,
                  env={"BLOG_DATA_DIR": data, "BLOG_STATIC_DIR": STATIC_DIR})
        s.data_dir = data
        return s

    return start


# --- helpers ------------------------------------------------------------------------------

def form_post(port, fields, content_type="application/x-www-form-urlencoded"):
    body = urllib.parse.urlencode(fields).encode()
    return request(port, "POST", "/posts", headers={"Content-Type": content_type}, body=body)


def json_post(port, payload, content_type="application/json"):
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return request(port, "POST", "/api/posts", headers={"Content-Type": content_type}, body=body)


def api_posts(port):
    r = request(port, "GET", "/api/posts")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("application/json"), r
    posts = json.loads(r.body)
    assert isinstance(posts, list), posts
    return posts


def text(r):
    return r.body.decode("utf-8", "replace")


# --- creating and reading posts ---------------------------------------------------------

def test_create_post_with_the_form(blog):
    s = blog()
    r = form_post(s.port, {"title": "First & foremost", "body": "Hello\n\nSecond paragraph"})
    assert r.status == 303, r
    loc = r.header("Location")
    m = re.fullmatch(r"/posts/(\d+)", loc or "")
    assert m, f"Location should be /posts/ID, got {loc!r}"
    post_id = int(m.group(1))

    page = request(s.port, "GET", loc)
    assert page.status == 200, page
    assert page.header("Content-Type").startswith("text/html"), page
    assert "<h1>First &amp; foremost</h1>" in text(page)
    assert "Second paragraph" in text(page)

    index = request(s.port, "GET", "/")
    assert index.status == 200, index
    assert f'href="/posts/{post_id}"' in text(index)
    assert "First &amp; foremost" in text(index)

    posts = api_posts(s.port)
    assert [(p["id"], p["title"], p["body"]) for p in posts] == [
        (post_id, "First & foremost", "Hello\n\nSecond paragraph")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", posts[0]["created_at"]), posts[0]


def test_create_post_with_json(blog):
    s = blog()
    r = json_post(s.port, {"title": "  Via the API  ", "body": "JSON body ✓"})
    assert r.status == 201, r
    created = json.loads(r.body)
    assert created["title"] == "Via the API"  # trimmed
    assert created["body"] == "JSON body ✓"
    assert isinstance(created["id"], int) and created["id"] > 0
    assert r.header("Location") == f"/api/posts/{created['id']}", r

    one = request(s.port, "GET", f"/api/posts/{created['id']}")
    assert one.status == 200, one
    assert json.loads(one.body) == created

    assert [p["id"] for p in api_posts(s.port)] == [created["id"]]
    index = request(s.port, "GET", "/")
    assert "Via the API" in text(index)
    html = request(s.port, "GET", f"/posts/{created['id']}")
    assert html.status == 200 and "<h1>Via the API</h1>" in text(html), html


def test_missing_post_is_404(blog):
    s = blog(workers=1)
    r = request(s.port, "GET", "/api/posts/999")
    assert r.status == 404, r
    assert r.header("Content-Type").startswith("application/json"), r
    assert "999" in json.loads(r.body)["error"]

    r = request(s.port, "GET", "/posts/999")
    assert r.status == 404, r
    assert "There is no post at /posts/999." in text(r)

    r = request(s.port, "GET", "/api/posts/abc")
    assert r.status == 404, r


def test_titles_and_bodies_are_html_escaped(blog):
    s = blog(workers=1)
    title = "<script>alert('x')</script>"
    r = form_post(s.port, {"title": title, "body": "<b>bold</b> & \"quoted\""})
    assert r.status == 303, r
    for path in (r.header("Location"), "/"):
        page = text(request(s.port, "GET", path))
        assert "&lt;script&gt;" in page, page
        assert "<script>" not in page, page
        assert "<b>bold</b>" not in page
        assert "&lt;b&gt;bold&lt;/b&gt; &amp;" in page
    # the API gives the text back as it was written
    assert api_posts(s.port)[0]["title"] == title


# --- refused submissions ------------------------------------------------------------------

def test_invalid_form_gets_422_with_field_errors_and_stores_nothing(blog):
    s = blog(workers=1)
    assert form_post(s.port, {"title": "kept", "body": "one"}).status == 303
    before = len(api_posts(s.port))

    r = form_post(s.port, {"title": "   ", "body": "a body <kept>"})
    assert r.status == 422, r
    page = text(r)
    assert "Title is required." in page
    assert 'aria-invalid="true"' in page
    # the user's input comes back in the form, escaped
    assert "a body &lt;kept&gt;" in page

    r = form_post(s.port, {"title": "x" * 201, "body": ""})
    assert r.status == 422, r
    page = text(r)
    assert "Title must be at most 200 characters (it has 201)." in page
    assert "Body is required." in page

    assert len(api_posts(s.port)) == before


def test_invalid_json_post_gets_422_with_fields_and_stores_nothing(blog):
    s = blog(workers=1)
    before = len(api_posts(s.port))
    r = json_post(s.port, {"title": "", "body": "b" * 20001})
    assert r.status == 422, r
    err = json.loads(r.body)
    assert err["error"] == "The post is invalid."
    assert err["fields"] == {"title": "Title is required.",
                             "body": "Body must be at most 20000 characters (it has 20001)."}
    r = json_post(s.port, {"body": "no title"})
    assert r.status == 422, r
    assert set(json.loads(r.body)["fields"]) == {"title"}
    assert len(api_posts(s.port)) == before == 0


def test_malformed_json_is_400_with_a_clear_message(blog):
    s = blog(workers=1)
    r = json_post(s.port, b'{"title": "x", "body": ')
    assert r.status == 400, r
    msg = json.loads(r.body)["error"]
    assert "line 1" in msg and "column" in msg, msg

    r = json_post(s.port, b'["not", "an", "object"]')
    assert r.status == 400, r
    assert "must be a JSON object" in json.loads(r.body)["error"]

    r = json_post(s.port, {"title": 5, "body": "x"})
    assert r.status == 400, r
    assert json.loads(r.body)["error"] == 'Malformed post: "title" must be a string, not a number.'
    assert api_posts(s.port) == []


def test_wrong_content_type_is_415(blog):
    s = blog(workers=1)
    r = json_post(s.port, b"title=x&body=y", content_type="application/x-www-form-urlencoded")
    assert r.status == 415, r
    assert "Content-Type must be application/json" in json.loads(r.body)["error"]

    r = form_post(s.port, {"title": "x", "body": "y"}, content_type="text/plain")
    assert r.status == 415, r
    assert "application/x-www-form-urlencoded" in text(r)
    assert api_posts(s.port) == []


def test_oversized_submission_is_413_and_stores_nothing(blog):
    s = blog(workers=1)
    big = "y" * (64 * 1024 + 100)
    r = form_post(s.port, {"title": "big", "body": big})
    assert r.status == 413, r
    assert "too large" in text(r)

    r = json_post(s.port, {"title": "big", "body": big})
    assert r.status == 413, r
    assert "the limit is 65536 bytes" in json.loads(r.body)["error"]

    # the same without a Content-Length: a chunked body
    payload = json.dumps({"title": "big", "body": big}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 8192]), payload[i:i + 8192])
                       for i in range(0, len(payload), 8192)) + b"0\r\n\r\n"
    r = request(s.port, "POST", "/api/posts", body=chunked,
                headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert r.status == 413, r
    assert api_posts(s.port) == []


def test_wrong_method_is_405_with_allow(blog):
    s = blog(workers=1)
    r = request(s.port, "GET", "/posts")
    assert r.status == 405 and r.header("Allow") == "POST", r
    r = request(s.port, "DELETE", "/api/posts")
    assert r.status == 405 and r.header("Allow") == "GET, HEAD, POST", r
    assert "DELETE is not allowed here" in json.loads(r.body)["error"]


def test_feed_lists_posts_escaped(blog):
    s = blog(workers=1)
    assert json_post(s.port, {"title": "Fish & <chips>", "body": "b"}).status == 201
    r = request(s.port, "GET", "/feed.xml")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("application/atom+xml"), r
    feed = text(r)
    assert feed.startswith("<?xml") and feed.rstrip().endswith("</feed>"), feed
    assert "<title>Fish &amp; &lt;chips&gt;</title>" in feed, feed
    assert feed.count("<entry>") == 1


def test_blog_mounted_below_a_prefix_links_and_redirects_there(blog):
    s = blog(workers=1, app_args=["--mount", f"/blog={BLOG_SO}"])
    r = request(s.port, "POST", "/blog/posts", headers={"Content-Type": "application/x-www-form-urlencoded"},
                body=b"title=Mounted&body=below+%2Fblog")
    assert r.status == 303, r
    assert re.fullmatch(r"/blog/posts/\d+", r.header("Location") or ""), r
    page = text(request(s.port, "GET", r.header("Location")))
    assert "<h1>Mounted</h1>" in page and "below /blog" in page
    index = text(request(s.port, "GET", "/blog/"))
    assert 'href="/blog/static/style.css"' in index
    assert re.search(r'href="/blog/posts/\d+">Mounted<', index), index
    r = request(s.port, "POST", "/blog/api/posts", headers={"Content-Type": "application/json"},
                body=b'{"title": "t", "body": "b"}')
    assert r.status == 201 and r.header("Location").startswith("/blog/api/posts/"), r
    assert request(s.port, "GET", "/blog/static/style.css").status == 200
    assert request(s.port, "GET", "/posts/1").status == 404  # nothing at /


# --- the stylesheet -----------------------------------------------------------------------

def test_stylesheet_is_served(blog):
    s = blog(workers=1)
    with open(os.path.join(STATIC_DIR, "style.css"), "rb") as f:
        css = f.read()
    r = request(s.port, "GET", "/static/style.css")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("text/css"), r
    assert r.header("Content-Length") == str(len(css)), r
    assert r.body == css

    head = request(s.port, "HEAD", "/static/style.css")
    assert head.status == 200 and head.header("Content-Length") == str(len(css)), head

    assert request(s.port, "GET", "/static/.hidden").status == 404
    assert request(s.port, "GET", "/static/missing.css").status == 404
    assert "no readable missing.css in BLOG_STATIC_DIR=" in s.read_log(), "a miss is logged"


def test_the_blog_copied_into_an_apps_dir_runs_anywhere_styled_and_tidy(serve, tmp_path):
    """A user copies libblog.so into an apps directory and starts srv from another
    directory, with no BLOG_* settings: /blog is styled (the stylesheet is compiled in),
    its data goes to ~/.local/share/srv-blog, and nothing appears in the working directory."""
    import shutil
    import subprocess
    apps = tmp_path / "apps"
    apps.mkdir()
    shutil.copy(BLOG_SO, apps / "libblog.so")
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {"HOME": str(home), "BLOG_DATA_DIR": "", "BLOG_STATIC_DIR": "", "XDG_DATA_HOME": ""}
    s = serve(["--apps-dir", str(apps)], env=env, popen_kw={"cwd": str(cwd)})
    index = request(s.port, "GET", "/blog/").body.decode()
    assert 'href="/blog/static/style.css"' in index, index
    with open(os.path.join(STATIC_DIR, "style.css"), "rb") as f:
        css = f.read()
    r = request(s.port, "GET", "/blog/static/style.css")
    assert r.status == 200 and r.body == css and r.header("Content-Type").startswith("text/css"), r
    assert os.listdir(cwd) == [], os.listdir(cwd)
    assert (home / ".local" / "share" / "srv-blog" / "blog.db").exists()


# --- concurrency and reloads ----------------------------------------------------------------

def test_concurrent_posts_through_several_workers_are_all_kept(blog, tmp_path):
    access = str(tmp_path / "access.log")
    s = blog(workers=3, extra_args=["--access-logfile", access,
                                    "--access-logformat", "%(p)s %(m)s %(U)s %(s)s"])
    threads, per_thread = 8, 10
    errors, ids = [], []
    lock = threading.Lock()

    def writer(t):
        for i in range(per_thread):
            try:
                if i % 2:
                    r = json_post(s.port, {"title": f"t{t} p{i}", "body": f"thread {t} post {i}"})
                    ok = r.status == 201
                    got = json.loads(r.body)["id"] if ok else None
                else:
                    r = form_post(s.port, {"title": f"t{t} p{i}", "body": f"thread {t} post {i}"})
                    ok = r.status == 303
                    got = int(r.header("Location").rsplit("/", 1)[1]) if ok else None
                with lock:
                    (ids.append(got) if ok else errors.append(r))
            except Exception as e:  # noqa: BLE001 - collected and reported below
                with lock:
                    errors.append(e)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors[:5]
    assert len(ids) == threads * per_thread
    assert len(set(ids)) == len(ids), "post ids must be distinct"

    posts = api_posts(s.port)
    assert len(posts) == threads * per_thread
    assert sorted(p["id"] for p in posts) == sorted(ids)
    assert {p["title"] for p in posts} == {f"t{t} p{i}" for t in range(threads) for i in range(per_thread)}

    # Which workers wrote? (best effort: the access log names the worker's pid)
    if os.path.exists(access):
        with open(access) as f:
            pids = {line.split()[0] for line in f if " POST " in line}
        print(f"POSTs handled by worker pids: {sorted(pids)}")
        assert len(pids) >= 2, f"all POSTs went to one worker: {pids}"


def test_posts_survive_a_hup_reload(blog):
    s = blog(workers=2)
    r = json_post(s.port, {"title": "before reload", "body": "still here"})
    assert r.status == 201, r
    post_id = json.loads(r.body)["id"]

    since = len(s.read_log())
    s.signal(signal.SIGHUP)
    s.wait_log(r"generation 2 ready", timeout=30, since=since)

    assert [p["id"] for p in api_posts(s.port)] == [post_id]
    page = request(s.port, "GET", f"/posts/{post_id}")
    assert page.status == 200 and "before reload" in text(page), page
    # the new generation can write too
    assert json_post(s.port, {"title": "after reload", "body": "x"}).status == 201
    assert len(api_posts(s.port)) == 2


@pytest.mark.root
def test_make_run_in_the_background_stops_with_kill(tmp_path):
    """README: `make run` serves the blog. Started in the background and stopped with
    `kill PID` (make's pid), srv stops too instead of staying behind, reparented to init and
    holding the port. Root: the recipe writes build/ in the tree; nothing is rebuilt (-o)."""
    import shutil
    import subprocess
    import time
    from conftest import SRV, answers, free_port, pid_alive, wait_until
    if not os.path.exists(BLOG_SO):
        pytest.fail(f"{BLOG_SO} missing: build the blog")
    port = free_port()
    build = tmp_path / "release"
    build.mkdir()
    shutil.copy(BLOG_SO, build / "libblog.so")
    log = open(tmp_path / "make.log", "wb")
    make = subprocess.Popen(["make", "--no-print-directory", "-C", ROOT, "-o", "build", "-o", "blog", "run",
                             f"BIND=127.0.0.1:{port}", "WORKERS=1", f"SRV={SRV}", f"BUILD={build}"],
                            stdout=log, stderr=subprocess.STDOUT)
    pid_file = os.path.join(ROOT, "build", "srv.pid")
    master = None
    try:
        wait_until(lambda: make.poll() is not None or answers(port), message=lambda: (tmp_path / "make.log").read_text())
        assert make.poll() is None, (tmp_path / "make.log").read_text()
        with open(pid_file) as f:
            master = int(f.read())
        make.terminate()  # kill PID
        make.wait(timeout=30)
        wait_until(lambda: not pid_alive(master), message=f"srv (pid {master}) to stop with make")
        assert not _listening(port)
    finally:
        if make.poll() is None:
            make.kill()
        if master and pid_alive(master):
            os.kill(master, signal.SIGKILL)  # left behind: the test failed, the port must not stay taken
        log.close()


def _listening(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
