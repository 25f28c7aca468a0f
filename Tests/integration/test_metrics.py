"""--metrics-bind (README "Metrics"): the master serves /metrics in the Prometheus text
format, summed over every worker and generation, so a scrape shows the whole server and
no counter ever goes down, whatever happens to the workers.

The acceptance test drives load through crashes, --timeout kills, --max-requests
recycling and reloads, scraping all along, and then checks that the scraped request
counter is exactly what the client counted (requests are sent one per connection, the
worker runs one at a time without --threads, so a request the client saw reset without a
response never ran, and is sent again)."""
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import SRV, Conn, free_port, plugin, request
from test_master import app_path, copy_in_place, wait_for  # noqa: F401

SERIES = re.compile(r'^([a-z_]+)(\{[^}]*\})? (\S+)$')


def scrape(port, path="/metrics"):
    """{(name, labels): value} of one scrape, and the raw text."""
    r = request(port, path=path)
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("text/plain; version=0.0.4"), r.headers
    text = r.body.decode()
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        series[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return series, text


def total(series, family, **labels):
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, l), v in series.items() if n == family and all(w in l for w in want))


class Client(threading.Thread):
    """Sends `plan` one request per connection; counts what came back by (method, status
    class); a reset before any response byte of an ordinary request is sent again (that
    request never ran), one of /crash or a request past --timeout is counted as "none"."""

    def __init__(self, port, plan):
        super().__init__(daemon=True)
        self.port, self.plan = port, plan
        self.counts = {}
        self.errors = []

    def run(self):
        for method, path, body, fatal in self.plan:
            for attempt in range(20):
                try:
                    c = Conn(self.port, timeout=30)
                    try:
                        headers = f"Content-Length: {len(body)}\r\n" if method == "POST" else ""
                        c.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode() + body)
                        r = c.read_response(head=method == "HEAD")
                    finally:
                        c.close()
                    key = (method, f"{r.status // 100}xx")
                    break
                except (ConnectionResetError, BrokenPipeError, EOFError, ConnectionRefusedError) as e:
                    if fatal:
                        key = (method, "none")
                        break
                    if attempt == 19:
                        self.errors.append(f"{method} {path}: {e!r} 20 times")
                        key = None
                    time.sleep(0.05)
            if key:
                self.counts[key] = self.counts.get(key, 0) + 1


class Scraper(threading.Thread):
    """Scrapes every 50 ms and records every counter that went down."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.scrapes = 0
        self.decreases = []

    def run(self):
        last = {}
        while not self.stop.is_set():
            series, _ = scrape(self.port)
            self.scrapes += 1
            for key, value in series.items():
                if key[0].endswith("_total") or key[0].endswith("_bucket") or key[0].endswith("_count"):
                    if value < last.get(key, 0):
                        self.decreases.append((key, last[key], value))
                    last[key] = value
            time.sleep(0.05)


def test_scraped_requests_equal_what_clients_counted_through_crashes_timeouts_recycling_and_reloads(serve, app_path):
    mport = free_port()
    # 484 requests over about ten worker lives (2 workers, 2 reloads, 3 crashes, a timeout):
    # with --max-requests 40 a CI run once saw no life reach it; 25 leaves room.
    s = serve(["--app", app_path, "--max-requests", "25", "--timeout", "2", "--metrics-bind", f"127.0.0.1:{mport}"],
              workers=2)
    ordinary = [("GET", "/", b"", False), ("POST", "/echo", b"x" * 100, False), ("GET", "/status?code=404", b"", False),
                ("HEAD", "/", b"", False), ("DELETE", "/status?code=503", b"", False)]
    plans = []
    for t in range(4):
        plan = [ordinary[(t + i) % len(ordinary)] for i in range(120)]
        if t == 0:
            for i in (30, 70, 110):
                plan.insert(i, ("GET", "/crash", b"", True))
        if t == 1:
            plan.insert(60, ("GET", "/sleep?ms=8000", b"", True))
        plans.append(plan)
    scraper = Scraper(mport)
    scraper.start()
    clients = [Client(s.port, p) for p in plans]
    for c in clients:
        c.start()
    # The reloads come while the clients run: after 40 of their requests.
    wait_for(lambda: sum(sum(list(c.counts.values())) for c in clients) >= 40, timeout=30,
             what="the clients to get going")
    copy_in_place(plugin("conformance2"), app_path)
    s.signal(signal.SIGHUP)
    s.wait_log(r"generation 2 ready", timeout=30)
    s.signal(signal.SIGHUP)
    s.wait_log(r"generation 3 ready", timeout=30)
    for c in clients:
        c.join(timeout=120)
    scraper.stop.set()
    scraper.join(timeout=10)

    assert not any(c.is_alive() for c in clients), "a client did not finish"
    assert not [e for c in clients for e in c.errors], [e for c in clients for e in c.errors]
    expected = {}
    for c in clients:
        for key, n in c.counts.items():
            expected[key] = expected.get(key, 0) + n

    def scraped():
        series, _ = scrape(mport)
        got = {}
        for (name, labels), v in series.items():
            if name == "srv_requests_total" and v:
                method = re.search(r'method="([^"]+)"', labels).group(1)
                status = re.search(r'status="([^"]+)"', labels).group(1)
                got[(method, status)] = got.get((method, status), 0) + int(v)
        return series, got

    # The last responses are counted just after they leave, and a worker recycled at the
    # end may still be on its way out (its exit counts once it is reaped, after its
    # replacement booted): wait for the numbers to agree, the gauges to settle and the
    # recycled worker's exit (the assertions below say what did not).
    deadline = time.monotonic() + 30
    while True:
        series, got = scraped()
        settled = (total(series, "srv_workers") == 2 and total(series, "srv_requests_in_flight") == 0
                   and total(series, "srv_worker_exits_total", cause="max-requests") >= 1)
        if (got == expected and settled) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == expected, f"scraped {sorted(got.items())}\nclients {sorted(expected.items())}"
    assert scraper.scrapes > 10 and not scraper.decreases, (scraper.scrapes, scraper.decreases[:5])
    assert total(series, "srv_worker_exits_total", cause="crash") == 3
    assert total(series, "srv_worker_exits_total", cause="timeout") == 1
    assert total(series, "srv_worker_exits_total", cause="max-requests") >= 1
    # Each reload retires the old workers; one busy with a /crash or the /sleep counts as that.
    assert total(series, "srv_worker_exits_total", cause="reload") >= 2
    assert total(series, "srv_reloads_total", result="promoted") == 2
    assert total(series, "srv_generation") == 3
    assert total(series, "srv_workers") == 2
    assert total(series, "srv_requests_in_flight") == 0
    assert total(series, "srv_app_info", app="/", name="conformance", version="2.0.0") == 1
    answered = sum(n for (m, st), n in expected.items() if st != "none")
    assert total(series, "srv_request_duration_seconds_count", app="/") == answered
    # HEAD sends no body bytes; the others' bodies are all counted.
    assert total(series, "srv_response_bytes_total", app="/") > 0


def test_srv_own_answers_and_gauges(serve):
    mport = free_port()
    s = serve(["--app", plugin("conformance"), "--metrics-bind", f"127.0.0.1:{mport}"], workers=1)
    c = Conn(s.port, timeout=10)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.read_response().status == 200
    # A keep-alive connection is open while this scrape runs.
    series, text = scrape(mport)
    assert total(series, "srv_connections_open") == 1, text
    c.close()
    bad = Conn(s.port, timeout=10)
    bad.send(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert bad.read_response().status == 400
    bad.close()
    wait_for(lambda: total(scrape(mport)[0], "srv_requests_total", app="-", status="4xx") == 1, timeout=30,
             what="srv's own 400 counted under app=\"-\"")
    series, text = scrape(mport)
    assert total(series, "srv_listen_queue_length") == 0, text
    assert total(series, "srv_worker_resident_bytes") > 1 << 20, text
    for family in ("srv_requests_total", "srv_request_duration_seconds", "srv_worker_exits_total"):
        assert f"# TYPE {family} " in text and f"# HELP {family} " in text, text


def test_the_metrics_listener_serves_metrics_only(serve):
    mport = free_port()
    s = serve(["--app", plugin("conformance"), "--metrics-bind", f"127.0.0.1:{mport}"], workers=1)
    assert request(mport, path="/").status == 404
    assert request(mport, method="POST", path="/metrics").status == 405
    r = request(mport, method="HEAD", path="/metrics")
    assert r.status == 200 and r.body == b"", r
    # The application's listener is the application's: /metrics there is the app's path.
    assert request(s.port, path="/metrics").body != scrape(mport)[1].encode()


def test_metrics_over_a_unix_socket(serve, tmp_path):
    path = str(tmp_path / "metrics.sock")
    serve(["--app", plugin("conformance"), "--metrics-bind", f"unix:{path}"], workers=1)
    with socket.socket(socket.AF_UNIX) as u:
        u.settimeout(10)
        u.connect(path)
        u.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := u.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"\nsrv_workers 1" in data, data[:300]


@pytest.mark.parametrize("value,expect", [
    ("nonsense:x:y", "metrics-bind"),
    ("127.0.0.1:{app}", "an address of its own"),
])
def test_a_bad_metrics_bind_is_refused_with_a_reason(value, expect):
    port = free_port()
    out = subprocess.run([SRV, "--app", plugin("conformance"), "-b", f"127.0.0.1:{port}",
                          "--metrics-bind", value.format(app=port)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 64, out
    assert expect in out.stderr, out.stderr
