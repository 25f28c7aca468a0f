import CSrvSystem
import Glibc

/// The master's `--metrics-bind` listener: `GET /metrics` answered from the master's own
/// loop, with non-blocking sockets, so a slow or stuck scraper never holds the master
/// (each connection has a 10 s deadline, and at most 32 are open). One request per
/// connection (the response says `Connection: close`), as Prometheus scrapes.
public final class MetricsServer {
    public let listener: Listener
    private final class Client {
        let fd: Int32
        let deadline: Instant
        var input: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        init(fd: Int32, deadline: Instant) { self.fd = fd; self.deadline = deadline }
    }
    private var clients: [Int32: Client] = [:]
    static let maxClients = 32
    static let deadline = 10.0

    public init(listener: Listener) {
        self.listener = listener
        _ = fcntl(listener.fd, F_SETFL, fcntl(listener.fd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        for fd in clients.keys { close(fd) }
        close(listener.fd)
    }

    /// What the master's poll waits on for this server.
    public var pollDescriptors: [pollfd] {
        var fds = [pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0)]
        for c in clients.values {
            fds.append(pollfd(fd: c.fd, events: Int16(c.output.isEmpty ? POLLIN : POLLOUT), revents: 0))
        }
        return fds
    }

    /// Accepts, reads, answers and closes what is ready; `render` makes the metrics text.
    public func serve(now: Instant, render: () -> [UInt8]) {
        while clients.count < Self.maxClients {
            let fd = srv_sys_accept_nonblocking(listener.fd)
            if fd < 0 { break }
            clients[fd] = Client(fd: fd, deadline: now.adding(seconds: Self.deadline))
        }
        for c in Array(clients.values) {
            if c.output.isEmpty { read(c, render: render) }
            if !c.output.isEmpty { write(c) }
            if clients[c.fd] != nil, now >= c.deadline { finish(c) }
        }
    }

    private func read(_ c: Client, render: () -> [UInt8]) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var ended = false
        while true {
            let n = recv(c.fd, &buffer, buffer.count, 0)
            if n < 0 && errno != EAGAIN && errno != EINTR { finish(c); return }
            if n < 0 { break }
            if n == 0 { ended = true; break }
            c.input += buffer[0..<n]
            if c.input.count > 16384 { respond(c, 431, "request head too large\n"); return }
        }
        guard let end = Self.headEnd(c.input) else {
            if ended { finish(c) }
            return
        }
        let line = c.input[..<(c.input.firstIndex(of: 0x0d) ?? end)].split(separator: 0x20).map { String(decoding: $0, as: UTF8.self) }
        guard line.count == 3, line[2].hasPrefix("HTTP/1.") else { respond(c, 400, "expected GET /metrics HTTP/1.1\n"); return }
        guard line[0] == "GET" || line[0] == "HEAD" else { respond(c, 405, "expected GET /metrics, found \(line[0])\n"); return }
        guard line[1] == "/metrics" || line[1].hasPrefix("/metrics?") else {
            respond(c, 404, "srv serves its metrics at /metrics; found \(line[1])\n")
            return
        }
        respond(c, 200, render(), contentType: "text/plain; version=0.0.4; charset=utf-8", head: line[0] == "HEAD")
    }

    private func respond(_ c: Client, _ status: Int, _ body: String) {
        respond(c, status, Array(body.utf8), contentType: "text/plain; charset=utf-8", head: false)
    }

    private func respond(_ c: Client, _ status: Int, _ body: [UInt8], contentType: String, head: Bool) {
        let reason = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                      431: "Request Header Fields Too Large"][status] ?? "Error"
        c.output = Array("HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8)
        if !head { c.output += body }
    }

    private func write(_ c: Client) {
        while c.written < c.output.count {
            let n = c.output.withUnsafeBytes { send(c.fd, $0.baseAddress! + c.written, c.output.count - c.written, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { return }
                finish(c)
                return
            }
            c.written += n
        }
        finish(c)
    }

    private func finish(_ c: Client) {
        close(c.fd)
        clients[c.fd] = nil
    }

    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 0x0d && bytes[i + 1] == 0x0a && bytes[i + 2] == 0x0d && bytes[i + 3] == 0x0a {
            return i
        }
        return nil
    }
}
