import CSrvSystem
import Dispatch
import Glibc
import NIOCore
import SrvGateway

/// The C-side memory of one request in flight, and the gateway callables bound to it.
///
/// A slot owns the `srv_environ` and everything it points to, the response being built,
/// and four libffi closures (start_response, write, input read, error write) made once
/// when the slot is created. Slots are pooled: a request takes one, and gives it back
/// after srv has called the body's close, which is when the spec lets its pointers die.
final class RequestSlot {
    enum State { case idle, awaitingStart, started, streaming }

    /// Where an inline write() sends a large body at once (the connection).
    protocol InlineOutput: AnyObject {
        /// Sends `count` bytes (after whatever the connection holds for the client) before
        /// returning; false when the client is gone or took nothing for --timeout.
        func sendNow(_ bytes: UnsafeRawPointer, _ count: Int) -> Bool
    }

    /// What the connection does with the response once the application has returned.
    enum Outcome {
        /// `out` is the whole response.
        case complete
        /// `out` is the head (and anything written); pull the iterator.
        case iterate
        /// `out` is the head; then send `length` bytes of `fd` from `offset`.
        case file(fd: Int32, offset: Int, length: Int)
        /// The response was committed (written) before a rule broke: send `out` as it is,
        /// then close the connection so the client sees a truncated response.
        case abort
    }

    let context: GatewayContext
    let environ = UnsafeMutablePointer<srv_environ>.allocate(capacity: 1)
    let input = UnsafeMutablePointer<srv_input>.allocate(capacity: 1)
    let errors = UnsafeMutablePointer<srv_errors>.allocate(capacity: 1)
    let body = UnsafeMutablePointer<srv_body>.allocate(capacity: 1)
    private var headers: UnsafeMutablePointer<srv_header>
    private var headerCapacity = 32
    private let extensions = UnsafeMutablePointer<srv_header>.allocate(capacity: 5)
    private var arena: UnsafeMutableRawPointer
    private var arenaCapacity = 4096
    private var arenaUsed = 0
    private var closures = srv_sys_request_closures()

    // MARK: Per-request state
    /// The app of the current request. Like `connection`, it stays set after the request
    /// (a pooled slot keeps one reference) and is replaced only when a request routes
    /// elsewhere: storing the same reference again would cost two atomic operations.
    private(set) var app: MountedApp?
    /// Set while the app runs on a --threads pool thread: write() then sends what has
    /// gathered past `streamThreshold` and waits until the socket took it (back-pressure),
    /// instead of holding a large written body in memory.
    var streamingChannel: Channel?
    static let streamThreshold = 64 * 1024
    /// Set while the app runs inline (without --threads): write() hands what has gathered
    /// past `inlineBound` to the connection, which sends it before write() returns, so a
    /// large written body never sits whole in the worker's memory. Unowned: the
    /// connection outlives the call it is set for.
    unowned(unsafe) var inlineOutput: InlineOutput?
    static let inlineBound = 1 << 20
    /// The client went away (or stopped reading) while write() sent inline: the rest of the
    /// response has nowhere to go.
    private(set) var clientGone = false
    /// Keeps the connection's strings (which environ points at) alive; replaced when the
    /// slot serves a request of another connection.
    private var connection: ConnectionInfo?
    var requestBody: RequestBody
    private var readOffset = 0
    /// The response as it is built: the head, then body bytes in the chosen framing.
    var out = OutBuffer()
    private(set) var state = State.idle
    private(set) var status = 0
    private var appContentLength: Int?
    private(set) var bodyBytes = 0
    private(set) var chunked = false
    private var bodyless = false
    private(set) var rule: String?
    private var bodyClosed = true
    var isHead = false
    /// The request has Content-Length or Transfer-Encoding (CONTENT_LENGTH is then a
    /// number, "0" included; "" means no body at all).
    var bodyFramed = false
    var http10 = false
    var keepAlive = true
    /// The request's method and target (in environ's memory), for logs and the scoreboard.
    var methodBytes: UnsafeRawBufferPointer { Self.bytes(environ.pointee.request_method) }
    var targetBytes: UnsafeRawBufferPointer { Self.bytes(environ.pointee.request_uri) }
    /// srv.request_id's bytes (in environ's memory).
    var idBytes: UnsafeRawBufferPointer { Self.bytes(extensions[1].value) }
    var requestLine: String {
        "\(String(decoding: methodBytes, as: UTF8.self)) \(String(decoding: targetBytes, as: UTF8.self)) (request \(requestID))"
    }
    private static func bytes(_ s: srv_str) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: s.ptr, count: s.len) }
    /// environ's constant strings, copied once per slot: reading a static on every request
    /// costs a lazy-initialization check each time.
    private let k = EnvironConstants.shared
    /// The worker's request-id prefix (GatewayContext's, which outlives every slot).
    private lazy var idPrefix = context.requestIDPrefix.str
    /// The worker's, held here so that a response need not reach it through `context`.
    private let dateCache: DateCache

    init(context: GatewayContext) {
        self.context = context
        dateCache = context.dateCache
        headers = .allocate(capacity: headerCapacity)
        arena = .allocate(byteCount: arenaCapacity, alignment: 8)
        requestBody = RequestBody(memoryLimit: context.bodyMemoryLimit, spoolDirectory: context.spoolDirectory)
        var callbacks = srv_sys_request_callbacks()
        // The slot owns the closures, so a callback never needs to retain it.
        callbacks.context = Unmanaged.passUnretained(self).toOpaque()
        callbacks.start_response = { ctx, status, headers, count, exc in
            Unmanaged<RequestSlot>.fromOpaque(ctx!)._withUnsafeGuaranteedRef {
                $0.startResponse(status: status, headers: headers, count: count, excInfo: exc)
            }
        }
        callbacks.write = { ctx, data, len in
            Unmanaged<RequestSlot>.fromOpaque(ctx!)._withUnsafeGuaranteedRef { $0.write(data, len) }
        }
        callbacks.read = { ctx, buf, n in
            Unmanaged<RequestSlot>.fromOpaque(ctx!)._withUnsafeGuaranteedRef { $0.read(buf, n) }
        }
        callbacks.error = { ctx, msg, len in
            Unmanaged<RequestSlot>.fromOpaque(ctx!)._withUnsafeGuaranteedRef { $0.logError(msg, len) }
        }
        guard srv_sys_closures_create(&callbacks, &closures) == 0 else {
            fatalError("libffi could not allocate closures (out of executable memory?)")
        }
        input.pointee = srv_input(size: MemoryLayout<srv_input>.size, length: 0, read: closures.read)
        errors.pointee = srv_errors(size: MemoryLayout<srv_errors>.size, write: closures.error)
    }

    var startResponse: srv_start_response_fn { closures.start_response }

    // MARK: - Building environ

    private func reserveArena(_ bytes: Int) {
        arenaUsed = 0
        if bytes > arenaCapacity {
            arena.deallocate()
            arenaCapacity = max(bytes, arenaCapacity * 2)
            arena = .allocate(byteCount: arenaCapacity, alignment: 8)
        }
    }

    @inline(__always)
    private func put(_ bytes: UnsafeRawBufferPointer) -> srv_str {
        let start = arena + arenaUsed
        if bytes.count > 0 { start.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        start.storeBytes(of: 0, toByteOffset: bytes.count, as: UInt8.self)
        arenaUsed += bytes.count + 1
        return srv_str(ptr: start.assumingMemoryBound(to: CChar.self), len: bytes.count)
    }

    /// srv's id of a request into the arena: the worker's prefix and the request's number.
    private func putRequestID(_ number: UInt64) -> srv_str {
        let prefix = idPrefix
        let start = (arena + arenaUsed).assumingMemoryBound(to: UInt8.self)
        UnsafeMutableRawPointer(start).copyMemory(from: prefix.ptr, byteCount: prefix.len)
        let n = prefix.len + OutBuffer.writeDecimal(number, to: start + prefix.len)
        start[n] = 0
        arenaUsed += n + 1
        return srv_str(ptr: UnsafeRawPointer(start).assumingMemoryBound(to: CChar.self), len: n)
    }

    /// The current request's id (srv.request_id), for log lines.
    var requestID: String {
        let v = extensions[1].value
        return String(decoding: UnsafeRawBufferPointer(start: v.ptr, count: v.len), as: UTF8.self)
    }

    /// A decimal number into the arena, NUL-terminated (20 digits at most).
    private func putDecimal(_ value: UInt64) -> srv_str {
        let start = (arena + arenaUsed).assumingMemoryBound(to: UInt8.self)
        let n = OutBuffer.writeDecimal(value, to: start)
        start[n] = 0
        arenaUsed += n + 1
        return srv_str(ptr: UnsafeRawPointer(start).assumingMemoryBound(to: CChar.self), len: n)
    }

    /// Fills environ for `head` and routes it (to `app`). Returns false when no mount
    /// matches, or throws a client error for a malformed target.
    /// - Parameter authority: an absolute-form target's authority, which names the server
    ///   instead of Host (RFC 9112 3.2.2).
    func prepare(head: RequestHead, connection: ConnectionInfo, router: Router, requestID: UInt64,
                 authority: UnsafeRawBufferPointer? = nil) throws -> Bool {
        let raw = head.target
        // Room for every string we copy, each with its NUL: the target twice (raw, then query
        // and decoded path), the names and values and SERVER_NAME from Host (head.size twice
        // covers both), the method, and the numbers after.
        reserveArena(head.size * 2 + 2 * head.fieldCount + head.methodName.count + 64)
        if head.fieldCount > headerCapacity {
            headers.deallocate()
            headerCapacity = head.fieldCount * 2
            headers = .allocate(capacity: headerCapacity)
        }
        var e = srv_environ()
        e.size = MemoryLayout<srv_environ>.size
        e.request_method = put(head.methodName)
        e.request_uri = put(raw)

        // The path: strip an absolute-form prefix, split off the query, percent-decode.
        var path = raw
        if let first = path.first, first != UInt8(ascii: "/") {
            if let r = Self.absoluteFormPath(path) { path = r } else if !(path.count == 1 && first == UInt8(ascii: "*")) {
                throw ClientError.badRequest("the request target must start with \"/\"")
            }
        }
        var query = UnsafeRawBufferPointer(start: nil, count: 0)
        if let q = path.firstIndex(of: UInt8(ascii: "?")) {
            query = UnsafeRawBufferPointer(rebasing: path[(q + 1)...])
            path = UnsafeRawBufferPointer(rebasing: path[..<q])
        }
        e.query_string = query.count == 0 ? k.empty : put(query)
        let decoded = try percentDecode(path)
        guard let app = router.route(UnsafeRawBufferPointer(start: decoded.ptr, count: decoded.len)) else { return false }
        if self.app !== app { self.app = app }
        let m = app.scriptName.count
        e.script_name = app.scriptName.str
        e.path_info = srv_str(ptr: decoded.ptr! + m, len: decoded.len - m)

        let strings = connection.c
        var count = 0
        e.content_type = k.empty
        e.content_length = k.empty
        var host: srv_str?
        var givenID: srv_str?
        let trusted = connection.trustedProxy
        for i in 0..<head.fieldCount {
            let name = head.name(i)
            // Names with "_" would collide with CGI names once mapped to HTTP_*; drop them.
            if memchr(name.baseAddress!, Int32(UInt8(ascii: "_")), name.count) != nil { continue }
            // srv removed the chunked coding: the app sees the body as it is, without the header.
            if name.count == 17, HTTPChars.equalsLower(name, "transfer-encoding") { continue }
            let n = put(name), v = put(head.value(i))
            headers[count] = srv_header(name: n, value: v)
            count += 1
            switch name.count {
            case 12 where HTTPChars.equalsLower(name, "content-type"): e.content_type = v
            case 4 where HTTPChars.equalsLower(name, "host"): host = v
            case 12 where trusted && HTTPChars.equalsLower(name, "x-request-id"):
                if RequestID.isAcceptable(head.value(i)) { givenID = v }
            default: break
            }
        }
        e.headers = UnsafePointer(headers)
        e.header_count = count
        if let a = authority { host = put(a) }
        if let host = host, host.len > 0 {
            // SERVER_NAME is the Host header without its port.
            var len = host.len
            if host.ptr[0] != CChar(UInt8(ascii: "[")) {
                if let colon = UnsafeRawBufferPointer(start: host.ptr, count: host.len).firstIndex(of: UInt8(ascii: ":")) { len = colon }
            } else if let close = UnsafeRawBufferPointer(start: host.ptr, count: host.len).firstIndex(of: UInt8(ascii: "]")) {
                len = close + 1
            }
            e.server_name = put(UnsafeRawBufferPointer(start: host.ptr, count: len))
        } else {
            e.server_name = strings.serverName
        }
        e.server_port = strings.serverPort
        e.server_protocol = http10 ? k.http10 : k.http11
        e.remote_addr = strings.remoteAddress
        e.remote_port = strings.remotePort
        e.url_scheme = strings.isHTTPS ? k.https : k.http
        if self.connection !== connection { self.connection = connection }
        e.input = input
        e.errors = errors
        e.multithread = context.multithread && app.plugin.threadSafe ? 1 : 0
        e.multiprocess = context.multiprocess ? 1 : 0
        e.run_once = 0
        extensions[0] = srv_header(name: k.keyVersion, value: context.versionString.str)
        // A trusted proxy's X-Request-Id (nginx's $request_id) is the request's id, so one id
        // follows the request through both servers' logs; otherwise srv's own.
        extensions[1] = srv_header(name: k.keyRequestID, value: givenID ?? putRequestID(requestID))
        extensions[2] = srv_header(name: k.keyWorkerPID, value: context.workerPID.str)
        extensions[3] = srv_header(name: k.keyGeneration, value: context.generation.str)
        extensions[4] = srv_header(name: k.keyAppHash, value: app.appHash.str)
        e.extensions = UnsafePointer(extensions)
        e.extension_count = 5
        environ.pointee = e
        return true
    }

    /// Sets CONTENT_LENGTH and wsgi.input once the body has been read completely.
    func bodyComplete() {
        let length = requestBody.length
        input.pointee.length = Int64(length)
        if length > 0 {
            // The arena was sized with room to spare for this.
            environ.pointee.content_length = putDecimal(UInt64(length))
        } else if bodyFramed {
            // Content-Length: 0, or an empty chunked body: a body of no bytes, not none.
            environ.pointee.content_length = k.zero
        }
        readOffset = 0
    }

    /// The path as applications and mounts see it (GATEWAY.md "The path"): percent-decoded
    /// once (`%2F` is a `/` like any other; `%00` and a bad escape are refused), then with
    /// its dot segments resolved (RFC 3986 5.2.4; a `..` above `/` is refused), NUL-terminated
    /// in the arena. A path with neither `%` nor `.` is copied as it is.
    private func percentDecode(_ path: UnsafeRawBufferPointer) throws -> srv_str {
        let start = (arena + arenaUsed).assumingMemoryBound(to: UInt8.self)
        var n = 0
        if path.contains(UInt8(ascii: "%")) {
            var i = 0
            while i < path.count {
                let c = path[i]
                if c == UInt8(ascii: "%") {
                    guard i + 2 < path.count, let hi = HTTPChars.hexValue(path[i + 1]), let lo = HTTPChars.hexValue(path[i + 2]) else {
                        throw ClientError.badRequest("invalid percent-encoding in the request path")
                    }
                    start[n] = hi << 4 | lo
                    guard start[n] != 0 else { throw ClientError.badRequest("the request path has an encoded NUL (%00)") }
                    i += 3
                } else {
                    start[n] = c
                    i += 1
                }
                n += 1
            }
        } else if path.count > 0 {
            UnsafeMutableRawPointer(start).copyMemory(from: path.baseAddress!, byteCount: path.count)
            n = path.count
        }
        var length = n
        if n > 0, memchr(start, Int32(UInt8(ascii: ".")), n) != nil {
            guard let resolved = Self.removeDotSegments(start, n) else {
                throw ClientError.badRequest("the request path climbs above / with \"..\"")
            }
            length = resolved
        }
        start[length] = 0
        arenaUsed += n + 1
        return srv_str(ptr: UnsafeRawPointer(start).assumingMemoryBound(to: CChar.self), len: length)
    }

    /// RFC 3986 5.2.4 on an absolute path, in place: "." segments go, ".." removes the
    /// segment before it, and a final "." or ".." leaves a trailing "/". Returns the new
    /// length, or nil for a ".." above the root.
    static func removeDotSegments(_ p: UnsafeMutablePointer<UInt8>, _ n: Int) -> Int? {
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        guard n > 0, p[0] == slash else { return n }
        var out = 0, i = 0
        while i < n {
            var j = i + 1
            while j < n, p[j] != slash { j += 1 }
            let length = j - i - 1, last = j >= n
            if length == 1 && p[i + 1] == dot {
                if last { p[out] = slash; out += 1 }
            } else if length == 2 && p[i + 1] == dot && p[i + 2] == dot {
                guard out > 0 else { return nil }
                var k = out - 1
                while k > 0, p[k] != slash { k -= 1 }
                out = k
                if last { p[out] = slash; out += 1 }
            } else {
                if out != i { memmove(p + out, p + i, j - i) }
                out += j - i
            }
            i = j
        }
        if out == 0 { p[0] = slash; out = 1 }
        return out
    }
    // MARK: - The callables

    private func breakRule(_ text: String) {
        if rule == nil { rule = text }
    }

    func startResponse(status: UnsafePointer<CChar>?, headers: UnsafePointer<srv_header>?, count: Int,
                       excInfo: UnsafePointer<srv_exc_info>?) -> srv_write_fn? {
        switch state {
        case .idle:
            breakRule("start_response called outside a request")
            return nil
        case .streaming:
            breakRule(excInfo == nil ? "start_response called twice" : "start_response after body started")
            return nil
        case .started where excInfo == nil:
            breakRule("start_response called twice")
            return nil
        case .started, .awaitingStart:
            break
        }
        if let exc = excInfo, let message = exc.pointee.message {
            context.log(.notice, "app \(app?.plugin.name ?? "?") replaced its response (exc_info: \(String(cString: message))) on \(requestLine)")
        }
        guard let status = status else { breakRule("invalid status (NULL)"); return nil }
        let statusLength = strlen(status)
        let s = UnsafeRawBufferPointer(start: status, count: statusLength)
        guard statusLength >= 4, Self.isDigit(s[0]), Self.isDigit(s[1]), Self.isDigit(s[2]), s[3] == UInt8(ascii: " "),
              HTTPChars.isFieldValue(s) else {
            breakRule("invalid status \"\(String(decoding: s.prefix(64), as: UTF8.self))\" (expected three digits, a space and a reason)")
            return nil
        }
        let code = Int(s[0] - 48) * 100 + Int(s[1] - 48) * 10 + Int(s[2] - 48)
        guard code >= 100 else { breakRule("invalid status code \(code)"); return nil }
        out.clear()
        out.append("HTTP/1.1 ")
        out.append(s)
        out.append("\r\n")
        appContentLength = nil
        if count > 0 && headers == nil { breakRule("invalid header (NULL pointer)"); return nil }
        for i in 0..<count {
            let h = headers![i]
            guard let np = h.name.ptr, let vp = h.value.ptr else {
                breakRule("invalid header (NULL pointer)")
                return nil
            }
            let name = UnsafeRawBufferPointer(start: np, count: h.name.len)
            let value = UnsafeRawBufferPointer(start: vp, count: h.value.len)
            // Copied and checked in one pass; committed below unless dropped.
            out.reserve(name.count + value.count + 4)
            let written = srv_http_put_field(out.end.assumingMemoryBound(to: UInt8.self), np, name.count, vp, value.count)
            guard written > 0 else {
                breakRule("invalid header \"\(String(decoding: name.prefix(64), as: UTF8.self))\" (a name must be a token; a value must not contain CR, LF or other control characters)")
                return nil
            }
            if HTTPChars.isHopByHop(name) {
                context.log(.warning, "app \(app?.plugin.name ?? "?") sent hop-by-hop header \(String(decoding: name, as: UTF8.self)); srv owns the framing, dropped")
                continue
            }
            if name.count == 14, HTTPChars.equalsLower(name, "content-length") {
                guard let n = HTTPChars.parseDecimal(value) else {
                    breakRule("invalid Content-Length \"\(String(decoding: value.prefix(32), as: UTF8.self))\"")
                    return nil
                }
                appContentLength = n
            }
            out.advance(written)
        }
        self.status = code
        state = .started
        return closures.write
    }

    func write(_ data: UnsafeRawPointer?, _ len: Int) -> Int32 {
        switch state {
        case .idle, .awaitingStart:
            breakRule("write before start_response")
            return SRV_ERROR
        case .started, .streaming:
            break
        }
        // A broken rule is checked before the response is committed: then it can still
        // become a 500. The first write with len > 0 commits (GATEWAY.md); len 0 does nothing.
        if rule != nil || clientGone { return SRV_ERROR }
        if len == 0 { return SRV_OK }
        if state == .started {
            finalizeHead(contentLength: nil)
            state = .streaming
        }
        if len > 0, let data = data { appendBody(UnsafeRawBufferPointer(start: data, count: len)) }
        if out.count >= Self.inlineBound, let output = inlineOutput {
            guard output.sendNow(out.base, out.count) else {
                clientGone = true
                out.clear()
                return SRV_ERROR
            }
            out.clear()
        }
        if let channel = streamingChannel, out.count >= Self.streamThreshold {
            let buffer = out.byteBuffer(channel.allocator)
            out.clear()
            // Back-pressure for the app's thread, bounded by --send-timeout: a client that
            // stops reading gets its connection dropped, and the thread comes back.
            let sent = DispatchSemaphore(value: 0)
            var failed = false
            channel.writeAndFlush(IOData.byteBuffer(buffer)).whenComplete { result in
                if case .failure = result { failed = true }
                sent.signal()
            }
            if sent.wait(timeout: .now() + context.sendTimeout) == .timedOut {
                context.log(.warning, "dropped the connection of \(String(decoding: methodBytes, as: UTF8.self)) \(String(decoding: targetBytes, as: UTF8.self)): the client took no byte for \(context.sendTimeout) s (--send-timeout)")
                channel.close(promise: nil)
                clientGone = true
                return SRV_ERROR
            }
            if failed { return SRV_ERROR }  // the client is gone
        }
        return SRV_OK
    }

    func read(_ buf: UnsafeMutableRawPointer?, _ n: Int) -> Int {
        guard state != .idle else { return -1 }
        if n == 0 { return 0 }  // copies nothing, even into NULL (GATEWAY.md)
        guard let buf = buf else { return -1 }
        let got = requestBody.read(into: buf, count: n, at: readOffset)
        if got > 0 { readOffset += got }
        return got
    }

    func logError(_ msg: UnsafePointer<CChar>?, _ len: Int) {
        guard let msg = msg else { return }
        let text = String(decoding: UnsafeRawBufferPointer(start: msg, count: len), as: UTF8.self)
        // One log line per line the app wrote, each with its prefix (the log escapes the rest).
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            context.log(.error, "app \(app?.plugin.name ?? "?"): \(line)")
        }
    }

    // MARK: - Framing the response

    /// Ends the head: srv's own headers, then the framing the body needs.
    private func finalizeHead(contentLength: Int?) {
        out.append("Server: srv\r\n")
        dateCache.write(into: &out)
        bodyless = status < 200 || status == 204 || status == 304
        chunked = false
        if bodyless {
        } else if appContentLength != nil {
        } else if let length = contentLength {
            out.append("Content-Length: ")
            out.appendDecimal(length)
            out.append("\r\n")
        } else if !http10 {
            out.append("Transfer-Encoding: chunked\r\n")
            chunked = !isHead
        } else {
            keepAlive = false
        }
        if !keepAlive {
            out.append("Connection: close\r\n\r\n")
        } else if http10 {
            out.append("Connection: keep-alive\r\n\r\n")
        } else {
            out.append("\r\n")
        }
    }

    /// Appends body bytes in the current framing (nothing for HEAD and bodyless statuses).
    func appendBody(_ bytes: UnsafeRawBufferPointer) {
        let before = bodyBytes
        bodyBytes += bytes.count
        if isHead || bodyless || bytes.count == 0 { return }
        var bytes = bytes
        if let announced = appContentLength, !chunked, bytes.count > announced - before {
            // Never send more than announced: on a keep-alive connection the excess would
            // be read as the next response.
            bytes = UnsafeRawBufferPointer(rebasing: bytes[..<max(0, announced - before)])
            breakRule("Content-Length mismatch (announced \(announced), the body is longer)")
        }
        if chunked {
            out.appendHex(bytes.count)
            out.append("\r\n")
            out.append(bytes)
            out.append("\r\n")
        } else {
            out.append(bytes)
        }
    }

    /// Appends the end of a chunked body, and checks the length the app announced.
    /// Returns false when the app's Content-Length was not met (the connection must close).
    func endBody() -> Bool {
        if chunked { out.append("0\r\n\r\n") }
        // For HEAD an app may announce GET's length and send nothing (GATEWAY.md "HEAD").
        if let announced = appContentLength, !bodyless, announced != bodyBytes, !(isHead && bodyBytes == 0) {
            breakRule("Content-Length mismatch (announced \(announced), sent \(bodyBytes))")
            return false
        }
        return true
    }

    // MARK: - Request lifecycle

    /// Readies the slot for calling the app.
    func begin() {
        state = .awaitingStart
        if rule != nil { rule = nil }
        if clientGone { clientGone = false }
        status = 0
        bodyBytes = 0
        chunked = false
        bodyless = false
        appContentLength = nil
        out.clear()
        // Zeroed but for its size, as GATEWAY.md promises (a file body sets fd and length).
        var b = srv_body()
        b.size = MemoryLayout<srv_body>.size
        body.pointee = b
        bodyClosed = false
    }

    /// The app runs on the worker's event-loop thread: without --threads, or without
    /// SRV_FLAG_THREAD_SAFE (GATEWAY.md, "Threads").
    var runsInline: Bool { !context.threaded || !app!.plugin.threadSafe }

    /// Calls the application.
    @inline(__always)
    func call() -> Int32 {
        // On the event loop one call runs at a time: start_response and write need no
        // closure then (see srv_sys_call_inline).
        if runsInline { return srv_sys_call_inline(app!.plugin.app, &closures, environ, body) }
        return app!.plugin.app(environ, closures.start_response, body)
    }

    /// Turns what the app returned into a response.
    func finish(_ rc: Int32) -> Outcome {
        var name: String { app?.plugin.name ?? "?" }
        if clientGone {
            closeBody()
            keepAlive = false
            return .abort
        }
        if rc != SRV_OK { breakRule("app returned SRV_ERROR") }
        if state == .awaitingStart { breakRule("start_response not called") }
        // After a write the head and body bytes count as sent (GATEWAY.md "committed").
        let committed = state == .streaming
        if let rule = rule { return committed ? abort(app: name, rule: rule) : fail(app: name, rule: rule) }
        let b = body.pointee
        switch b.kind {
        case Int32(SRV_BODY_EMPTY.rawValue):
            if state == .started { finalizeHead(contentLength: appContentLength ?? 0) }
            if !endBody() { return committed ? abort(app: name, rule: rule!) : fail(app: name, rule: rule!) }
            closeBody()
            return .complete
        case Int32(SRV_BODY_BYTES.rawValue):
            let bytes = UnsafeRawBufferPointer(start: b.data, count: b.data == nil ? 0 : b.len)
            if state == .started {
                if let announced = appContentLength, announced != bytes.count, !(status < 200 || status == 204 || status == 304),
                   !(isHead && bytes.count == 0) {
                    return fail(app: name, rule: "Content-Length mismatch (announced \(announced), body has \(bytes.count) bytes)")
                }
                finalizeHead(contentLength: bytes.count)
            }
            appendBody(bytes)
            let ok = endBody()
            closeBody()
            if !ok { return committed ? abort(app: name, rule: rule!) : fail(app: name, rule: rule!) }
            return .complete
        case Int32(SRV_BODY_ITER.rawValue):
            guard b.next != nil else { return fail(app: name, rule: "iterator body without next") }
            if state == .started { finalizeHead(contentLength: nil) }
            if isHead || bodyless { closeBody(); return .complete }
            state = .streaming
            return .iterate
        case Int32(SRV_BODY_FILE.rawValue):
            var st = stat()
            guard b.fd >= 0, fstat(b.fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                return fail(app: name, rule: "file body without an open regular file")
            }
            let size = Int(st.st_size), offset = Int(b.offset)
            let length = b.length < 0 ? size - offset : Int(b.length)
            guard offset >= 0, offset <= size, length >= 0, offset + length <= size else {
                return fail(app: name, rule: "file body range \(offset)+\(length) outside the file (\(size) bytes)")
            }
            if state == .started {
                if let announced = appContentLength, announced != length {
                    return fail(app: name, rule: "Content-Length mismatch (announced \(announced), file range has \(length) bytes)")
                }
                finalizeHead(contentLength: length)
            }
            bodyBytes += length
            if isHead || bodyless { _ = endBody(); closeBody(); return .complete }
            state = .streaming
            return .file(fd: b.fd, offset: offset, length: length)
        default:
            return fail(app: name, rule: "unknown body kind \(b.kind)")
        }
    }

    /// Pulls the next chunk of an iterator body into `out`: true for more, false at the end.
    /// Throws when the app's iterator reports an error.
    func pull() throws -> Bool {
        var data: UnsafeRawPointer?
        var len = 0
        let b = body.pointee
        let rc = b.next!(b.ctx, &data, &len)
        if rc == 1 {
            if let data = data, len > 0 { appendBody(UnsafeRawBufferPointer(start: data, count: len)) }
            if let rule = rule { throw AppFailure(rule: rule) }
            return true
        }
        if rc == 0 { return false }
        breakRule("iterator returned SRV_ERROR")
        throw AppFailure(rule: rule!)
    }

    /// Ends a committed response that broke a rule: what was written goes out, then the
    /// connection closes.
    private func abort(app name: String, rule: String) -> Outcome {
        context.log(.error, "app \(name) broke rule '\(rule)' on \(requestLine); connection aborted")
        closeBody()
        keepAlive = false
        return .abort
    }

    /// A 500 in place of whatever was built (nothing has reached the client yet).
    private func fail(app name: String, rule: String) -> Outcome {
        context.log(.error, "app \(name) broke rule '\(rule)' on \(requestLine)")
        closeBody()
        out.clear()
        status = 500
        let text = "Internal Server Error\n"
        out.append("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n")
        appContentLength = nil
        finalizeHead(contentLength: text.utf8.count)
        if !isHead { out.append(string: text) }
        bodyBytes = text.utf8.count
        state = .streaming
        return .complete
    }

    /// Calls the body's close exactly once.
    func closeBody() {
        if bodyClosed { return }
        bodyClosed = true
        let b = body.pointee
        if let close = b.close { close(b.ctx) }
    }

    /// Ends the request: closes the body if still open and drops the request's memory.
    func release() {
        closeBody()
        requestBody.release()
        out.reset()
        state = .idle
    }

    // MARK: - Small helpers

    @inline(__always) static func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }

    static func absoluteFormPath(_ target: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        // "http://host/path" → "/path" (RFC 9112 3.2.2).
        guard let authority = RequestValidation.absoluteFormAuthorityRange(target) else { return nil }
        if authority.upperBound < target.count, target[authority.upperBound] == UInt8(ascii: "/") {
            return UnsafeRawBufferPointer(rebasing: target[authority.upperBound...])
        }
        return UnsafeRawBufferPointer(start: UnsafeRawPointer(Self.slash.ptr), count: 1)
    }
    private static let slash = permanentString("/")
}

/// An application broke the spec after the response head was sent.
struct AppFailure: Error { let rule: String }

/// A request srv refuses before any application sees it.
enum ClientError: Error {
    case badRequest(String)
    var status: (Int, String) {
        switch self { case .badRequest(let m): return (400, m) }
    }
}

/// environ's constant values, made once for the process.
struct EnvironConstants {
    let empty = permanentString("")
    let zero = permanentString("0")
    let http10 = permanentString("HTTP/1.0")
    let http11 = permanentString("HTTP/1.1")
    let http = permanentString("http")
    let https = permanentString("https")
    let keyVersion = permanentString("srv.version")
    let keyRequestID = permanentString("srv.request_id")
    let keyWorkerPID = permanentString("srv.worker_pid")
    let keyGeneration = permanentString("srv.generation")
    let keyAppHash = permanentString("srv.app_hash")
    static let shared = EnvironConstants()
}

/// A string that lives for the whole process (environ's constant values).
func permanentString(_ s: String) -> srv_str {
    let p = strdup(s)!
    return srv_str(ptr: UnsafePointer(p), len: strlen(p))
}
