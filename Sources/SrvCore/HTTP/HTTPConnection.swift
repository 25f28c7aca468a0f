import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import SrvGateway

/// One client connection: where a request enters, meets the plugin, and its response leaves.
///
/// The pipeline is lean on purpose: NIO's llhttp decoder, then this handler, which writes
/// each response as one pre-formatted buffer (no HTTPResponseEncoder). Requests are
/// answered strictly in order; while a response is still streaming (an iterator or file
/// body, or an app running on --threads) further pipelined requests wait in `queue` and
/// reads stop, so a client cannot make srv buffer without bound.
final class HTTPConnection: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = IOData

    enum Phase {
        /// Waiting for a request head.
        case idle
        /// Reading the body of the request in `slot`.
        case readingBody
        /// The body of a request nobody will see (404, rejected): dropped until .end.
        case discardingBody(status: Int, message: String)
        /// The app or the response is still busy; further input waits.
        case responding
        /// The connection is closing; input is ignored.
        case closing
    }

    let worker: WorkerServer
    private var info: ConnectionInfo!
    private var phase = Phase.idle
    private var slot: RequestSlot?
    private var head: HTTPRequestHead?
    private var queue = CircularBuffer<HTTPServerRequestPart>(initialCapacity: 4)
    private var draining = false
    /// autoRead is off while a response streams or the app runs on a thread: pipelined
    /// input then waits in the socket, not in srv's memory. Toggled only on those paths,
    /// so an inline response costs nothing extra.
    private var readsPaused = false
    private var needsFlush = false
    private var closeAfterResponse = false
    private var lastActivity = NIODeadline.now()
    private var idleTimer: Scheduled<Void>?
    private var requestStart = timespec()
    private var iterating = false
    private var tornDown = false
    /// The app is running on a --threads pool thread with the current slot.
    private var appRunning = false
    /// Strong on purpose (weak references put objects on Swift's slow refcount path);
    /// cleared when the channel goes inactive.
    private var context: ChannelHandlerContext?

    init(worker: WorkerServer) {
        self.worker = worker
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        info = ConnectionInfo(local: context.channel.localAddress, remote: context.channel.remoteAddress,
                              forwardedAllow: worker.settings.forwardedAllowIPs)
        worker.connectionOpened(self)
        armIdleTimer(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        teardown()
        context.fireChannelInactive()
    }

    /// Also runs for a channel closed before it ever became active (then there is no
    /// channelInactive), so the worker never waits for a connection that is gone.
    func handlerRemoved(context: ChannelHandlerContext) {
        teardown()
    }

    private func teardown() {
        if tornDown { return }
        tornDown = true
        idleTimer?.cancel()
        idleTimer = nil
        context = nil
        // A slot whose app still runs on a pool thread is released when it returns.
        if let slot = slot, !appRunning { worker.releaseSlot(slot) }
        slot = nil
        phase = .closing
        worker.connectionClosed(self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .closing = phase { return }
        if case .responding = phase { queue.append(part); return }
        if !queue.isEmpty { queue.append(part); return }
        process(part, context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let proxied = event as? ProxyProtocolDecoder.Proxied {
            info = ConnectionInfo(local: proxied.destination ?? context.channel.localAddress, remote: proxied.source,
                                  forwardedAllow: worker.settings.forwardedAllowIPs)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    private func pauseReads(context: ChannelHandlerContext) {
        guard !readsPaused else { return }
        readsPaused = true
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
    }

    private func resumeReads(context: ChannelHandlerContext) {
        guard readsPaused else { return }
        readsPaused = false
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if iterating && context.channel.isWritable { pump(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError {
            // A framing error: answer it if the connection is between responses, then close.
            // The decoder stops here, so no byte after the error reaches an application.
            let (status, message) = Self.describe(parserError)
            worker.log(.info, "rejected a request from \(info?.remoteAddress ?? "?") with \(status): \(message)")
            switch phase {
            case .idle, .readingBody, .discardingBody:
                if let slot = slot { worker.releaseSlot(slot); self.slot = nil }
                reject(status: status, message: message, context: context)
            case .responding:
                closeAfterResponse = true
                queue.removeAll()
            case .closing:
                break
            }
            return
        }
        if case .responding = phase {} else { context.close(promise: nil) }
        phase = .closing
    }

    static func describe(_ e: HTTPParserError) -> (Int, String) {
        switch e {
        case .headerOverflow: return (431, "the request head is larger than srv accepts")
        case .invalidContentLength, .unexpectedContentLength:
            return (400, "invalid or conflicting Content-Length (also sent with Transfer-Encoding, or repeated)")
        case .invalidChunkSize: return (400, "invalid chunk size in a chunked body")
        case .invalidHeaderToken: return (400, "invalid header name or value (control characters, obsolete line folding or a bad token)")
        case .invalidVersion: return (400, "invalid HTTP version")
        case .invalidMethod: return (400, "invalid method")
        case .invalidURL, .invalidPath, .invalidQueryString, .invalidFragment, .invalidHost, .invalidPort:
            return (400, "invalid request target")
        default: return (400, "malformed request (\(e))")
        }
    }

    // MARK: - Requests

    private func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            lastActivity = .now()
            startRequest(head, context: context)
        case .body(var buffer):
            switch phase {
            case .readingBody:
                guard let slot = slot else { return }
                if slot.requestBody.length + buffer.readableBytes > worker.settings.limitRequestBody {
                    worker.releaseSlot(slot); self.slot = nil
                    reject(status: 413, message: "the request body is larger than the limit of \(worker.settings.limitRequestBody) bytes (--limit-request-body)", context: context)
                    return
                }
                do { try slot.requestBody.append(&buffer) } catch {
                    worker.log(.error, "\(error)")
                    worker.releaseSlot(slot); self.slot = nil
                    reject(status: 500, message: "srv could not store the request body", context: context)
                }
            default:
                break
            }
        case .end:
            switch phase {
            case .readingBody:
                dispatch(context: context)
            case .discardingBody(let status, let message):
                phase = .idle
                respondPlain(status: status, message: message, close: !(head?.isKeepAlive ?? false), context: context)
                requestFinished(context: context)
            default:
                break
            }
        }
    }

    private func startRequest(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        clock_gettime(CLOCK_REALTIME, &requestStart)
        self.head = head
        let s = worker.settings
        guard head.version.major == 1 else {
            reject(status: 505, message: "HTTP version \(head.version.major).\(head.version.minor) is not supported; expected HTTP/1.0 or HTTP/1.1", context: context)
            return
        }
        let lineLength = head.method.rawValue.utf8.count + head.uri.utf8.count + 10
        if s.limitRequestLine > 0 && lineLength > s.limitRequestLine {
            reject(status: 414, message: "the request line is \(lineLength) bytes, longer than the limit of \(s.limitRequestLine) (--limit-request-line)", context: context)
            return
        }
        if s.limitRequestFields > 0 && head.headers.count > s.limitRequestFields {
            reject(status: 431, message: "the request has \(head.headers.count) header fields, more than the limit of \(s.limitRequestFields) (--limit-request-fields)", context: context)
            return
        }
        var contentLength: Int?
        var contentLengthCount = 0
        var transferEncoding: String?
        var expect: String?
        var forwardedFor: String?, forwardedProto: String?
        var hostCount = 0
        let trusted = info.trustedProxy
        var headerBytes = 0
        for (name, value) in head.headers {
            let fieldSize = name.utf8.count + value.utf8.count + 2
            headerBytes += fieldSize
            if s.limitRequestFieldSize > 0 && fieldSize > s.limitRequestFieldSize {
                reject(status: 431, message: "header field \(name) is larger than the limit of \(s.limitRequestFieldSize) bytes (--limit-request-field-size)", context: context)
                return
            }
            switch name.utf8.count {
            case 14 where HTTPChars.equalsLower(name, "content-length"):
                contentLengthCount += 1
                contentLength = HTTPChars.parseDecimal(value.trimmingSpaces)
                if contentLength == nil || contentLengthCount > 1 {
                    reject(status: 400, message: "invalid Content-Length (expected one decimal number, found \"\(value.prefix(40))\"\(contentLengthCount > 1 ? " repeated" : ""))", context: context)
                    return
                }
            case 17 where HTTPChars.equalsLower(name, "transfer-encoding"):
                transferEncoding = (transferEncoding.map { $0 + "," } ?? "") + value
            case 4 where HTTPChars.equalsLower(name, "host"):
                hostCount += 1
            case 6 where HTTPChars.equalsLower(name, "expect"):
                expect = value
            case 15 where trusted && HTTPChars.equalsLower(name, "x-forwarded-for"):
                forwardedFor = value
            case 17 where trusted && HTTPChars.equalsLower(name, "x-forwarded-proto"):
                forwardedProto = value
            default: break
            }
        }
        if hostCount > 1 || (hostCount == 0 && head.version.minor >= 1) {
            reject(status: 400, message: hostCount > 1 ? "a request must have one Host header, found \(hostCount)" : "an HTTP/1.1 request must have a Host header", context: context)
            return
        }
        if let te = transferEncoding {
            if te.trimmingSpaces.lowercased() != "chunked" {
                reject(status: 501, message: "Transfer-Encoding \"\(te.prefix(40))\" is not supported; srv accepts only chunked", context: context)
                return
            }
            if contentLength != nil {
                reject(status: 400, message: "a request must not have both Content-Length and Transfer-Encoding", context: context)
                return
            }
        }
        if let length = contentLength, length > s.limitRequestBody {
            reject(status: 413, message: "the request body is \(length) bytes, larger than the limit of \(s.limitRequestBody) (--limit-request-body)", context: context)
            return
        }
        if let expect = expect, head.version.minor >= 1 {
            guard expect.trimmingSpaces.lowercased() == "100-continue" else {
                reject(status: 417, message: "unsupported expectation \"\(expect.prefix(40))\"; srv supports only 100-continue", context: context)
                return
            }
            var cont = context.channel.allocator.buffer(capacity: 32)
            cont.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
            context.writeAndFlush(wrapOutboundOut(.byteBuffer(cont)), promise: nil)
        }

        let slot = worker.acquireSlot()
        slot.isHead = head.method == .HEAD
        slot.http10 = head.version.minor == 0
        slot.keepAlive = head.isKeepAlive && !closeAfterResponse && !worker.isShuttingDown
        slot.method = head.method.rawValue
        slot.target = head.uri
        let connection = forwardedFor != nil || forwardedProto != nil
            ? info.forwarded(for: forwardedFor, proto: forwardedProto) : info!
        do {
            guard try slot.prepare(head: head, connection: connection, router: worker.router, requestID: worker.nextRequestID(),
                                    headerBytes: headerBytes) != nil else {
                worker.releaseSlot(slot)
                phase = .discardingBody(status: 404, message: "Not Found")
                return
            }
        } catch let e as ClientError {
            worker.releaseSlot(slot)
            let (status, message) = e.status
            reject(status: status, message: message, context: context)
            return
        } catch {
            worker.releaseSlot(slot)
            reject(status: 400, message: "\(error)", context: context)
            return
        }
        self.slot = slot
        phase = .readingBody
    }

    /// Calls the application, inline or on the thread pool.
    private func dispatch(context: ChannelHandlerContext) {
        guard let slot = slot else { return }
        slot.bodyComplete()
        worker.scoreboard?.requestBegan(method: slot.method, target: slot.target)
        slot.begin()
        phase = .responding
        if let pool = worker.threadPool {
            pauseReads(context: context)
            slot.streamingChannel = context.channel
            appRunning = true
            let loop = context.eventLoop
            pool.submit { _ in
                let rc = slot.call()
                loop.execute { self.applicationReturned(rc, slot: slot, context: context) }
            }
        } else {
            applicationReturned(slot.call(), slot: slot, context: context)
        }
    }

    private func applicationReturned(_ rc: Int32, slot: RequestSlot, context: ChannelHandlerContext) {
        appRunning = false
        slot.streamingChannel = nil
        worker.scoreboard?.requestEnded()
        if tornDown || self.slot !== slot {
            // The connection closed while the app ran on a pool thread.
            worker.releaseSlot(slot)
            return
        }
        if case .closing = phase { worker.releaseSlot(slot); self.slot = nil; return }
        switch slot.finish(rc) {
        case .complete:
            context.write(wrapOutboundOut(.byteBuffer(slot.out.byteBuffer(context.channel.allocator))), promise: nil)
            needsFlush = true
            requestFinished(context: context)
        case .abort:
            context.write(wrapOutboundOut(.byteBuffer(slot.out.byteBuffer(context.channel.allocator))), promise: nil)
            context.flush()
            phase = .closing
            worker.releaseSlot(slot)
            self.slot = nil
            context.close(promise: nil)
        case .iterate:
            iterating = true
            pauseReads(context: context)
            pump(context: context)
        case .file(let fd, let offset, let length):
            pauseReads(context: context)
            context.write(wrapOutboundOut(.byteBuffer(slot.out.byteBuffer(context.channel.allocator))), promise: nil)
            let copy = dup(fd)
            guard copy >= 0 else {
                worker.log(.error, "cannot dup the file body's fd: \(String(cString: strerror(errno)))")
                context.close(promise: nil)
                return
            }
            let handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: copy)
            let region = FileRegion(fileHandle: handle, readerIndex: offset, endIndex: offset + length)
            let chunked = slot.chunked
            if chunked {
                var prefix = context.channel.allocator.buffer(capacity: 16)
                HTTPChars.writeHex(length, into: &prefix)
                prefix.writeStaticString("\r\n")
                context.write(wrapOutboundOut(.byteBuffer(prefix)), promise: nil)
            }
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.write(wrapOutboundOut(.fileRegion(region)), promise: promise)
            if chunked {
                var suffix = context.channel.allocator.buffer(capacity: 8)
                suffix.writeStaticString("\r\n0\r\n\r\n")
                context.write(wrapOutboundOut(.byteBuffer(suffix)), promise: nil)
            }
            context.flush()
            promise.futureResult.whenComplete { result in
                try? handle.close()
                slot.closeBody()
                if case .failure = result { context.close(promise: nil); return }
                self.requestFinished(context: context)
            }
        }
    }

    /// Pulls an iterator body while the client keeps up (back-pressure through writability).
    private func pump(context: ChannelHandlerContext) {
        guard let slot = slot, iterating else { return }
        do {
            while context.channel.isWritable {
                if try !slot.pull() {
                    iterating = false
                    let complete = slot.endBody()
                    slot.closeBody()
                    context.write(wrapOutboundOut(.byteBuffer(slot.out.byteBuffer(context.channel.allocator))), promise: nil)
                    if !complete {
                        worker.log(.error, "app \(slot.app?.plugin.name ?? "?") broke rule '\(slot.rule ?? "")' on \(slot.requestLine)")
                        context.flush()
                        context.close(promise: nil)
                        phase = .closing
                        return
                    }
                    needsFlush = false
                    context.flush()
                    requestFinished(context: context)
                    return
                }
                if slot.out.count >= 16384 {
                    context.write(wrapOutboundOut(.byteBuffer(slot.out.byteBuffer(context.channel.allocator))), promise: nil)
                    slot.out.clear()
                }
            }
            if slot.out.count > 0 {
                context.write(wrapOutboundOut(.byteBuffer(slot.out.byteBuffer(context.channel.allocator))), promise: nil)
                slot.out.clear()
            }
            context.flush()
        } catch {
            // The head is gone already: all srv can do is cut the connection.
            iterating = false
            worker.log(.error, "app \(slot.app?.plugin.name ?? "?") broke rule '\((error as? AppFailure)?.rule ?? "\(error)")' on \(slot.requestLine); connection aborted")
            slot.closeBody()
            if slot.out.count > 0 { context.write(wrapOutboundOut(.byteBuffer(slot.out.byteBuffer(context.channel.allocator))), promise: nil) }
            context.flush()
            context.close(promise: nil)
            phase = .closing
        }
    }

    /// Logs the request, recycles the slot and moves on to the next pipelined request.
    private func requestFinished(context: ChannelHandlerContext) {
        var keepAlive = head?.isKeepAlive ?? false
        if let slot = slot {
            keepAlive = slot.keepAlive
            if let log = worker.accessLog, let head = head { logAccess(log, head: head, status: slot.status, bytes: slot.bodyBytes) }
            worker.releaseSlot(slot)
            self.slot = nil
            worker.requestCompleted()
        }
        iterating = false
        lastActivity = .now()
        if !keepAlive || closeAfterResponse || worker.isShuttingDown {
            phase = .closing
            context.writeAndFlush(wrapOutboundOut(.byteBuffer(context.channel.allocator.buffer(capacity: 0)))).whenComplete { _ in
                context.close(promise: nil)
            }
            return
        }
        phase = .idle
        drainQueue(context: context)
    }

    /// Processes pipelined input that waited while a response was in progress, until a
    /// response goes asynchronous again; then flushes and lets the socket be read again.
    private func drainQueue(context: ChannelHandlerContext) {
        guard !draining else { return }  // requestFinished inside the loop below
        draining = true
        defer { draining = false }
        while takesInput, let part = queue.popFirst() { process(part, context: context) }
        guard takesInput else { return }
        if needsFlush { needsFlush = false; context.flush() }
        resumeReads(context: context)
    }

    /// Between responses or reading a request (not responding, not closing).
    private var takesInput: Bool {
        switch phase {
        case .idle, .readingBody, .discardingBody: return true
        case .responding, .closing: return false
        }
    }

    private func logAccess(_ log: AccessLog, head: HTTPRequestHead, status: Int, bytes: Int) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let micros = (now.tv_sec - requestStart.tv_sec) * 1_000_000 + (now.tv_nsec - requestStart.tv_nsec) / 1000
        log.log(AccessRecord(remote: info.remoteAddress, method: head.method.rawValue, uri: head.uri,
                             version: "HTTP/\(head.version.major).\(head.version.minor)", status: status,
                             bytes: bytes, headers: head.headers, started: requestStart, durationMicros: micros))
    }

    // MARK: - srv's own answers

    /// Answers a request srv refuses (the app never sees it) and closes the connection.
    private func reject(status: Int, message: String, context: ChannelHandlerContext) {
        respondPlain(status: status, message: message, close: true, context: context)
        if let log = worker.accessLog, let head = head { logAccess(log, head: head, status: status, bytes: message.utf8.count + 1) }
        phase = .closing
        queue.removeAll()
        context.flush()
        context.close(promise: nil)
    }

    private func respondPlain(status: Int, message: String, close: Bool, context: ChannelHandlerContext) {
        var out = OutBuffer(capacity: 256 + message.utf8.count)
        defer { out.deallocate() }
        out.append(string: "HTTP/1.1 \(status) \(HTTPResponseStatus(statusCode: status).reasonPhrase)\r\nServer: srv\r\n")
        worker.dateCache.write(into: &out)
        let body = message + "\n"
        out.append(string: "Content-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\n")
        if close || closeAfterResponse || worker.isShuttingDown { out.append("Connection: close\r\n") }
        out.append("\r\n")
        if head?.method != .HEAD { out.append(string: body) }
        context.write(wrapOutboundOut(.byteBuffer(out.byteBuffer(context.channel.allocator))), promise: nil)
        needsFlush = true
    }

    // MARK: - Timers and shutdown

    /// Closes a connection idle longer than --keep-alive (or stuck sending a request).
    private func armIdleTimer(context: ChannelHandlerContext) {
        let keepAlive = max(worker.settings.keepAlive, 0.001)
        let limit = TimeAmount.nanoseconds(Int64(keepAlive * 1e9))
        idleTimer = context.eventLoop.scheduleTask(in: limit) {
            guard let context = self.context else { return }
            let idleFor = NIODeadline.now() - self.lastActivity
            switch self.phase {
            case .idle where idleFor >= limit:
                self.phase = .closing
                context.close(promise: nil)
                return
            case .readingBody where idleFor >= .seconds(Int64(max(self.worker.settings.timeout, keepAlive))):
                self.phase = .closing
                context.close(promise: nil)
                return
            default:
                self.armIdleTimer(context: context)
            }
        }
    }

    /// Graceful shutdown: every connection gets the response to its next request (the one
    /// in progress, or one a keep-alive client is sending right now) with Connection:
    /// close, then closes. Closing an idle keep-alive connection at once would race with a
    /// request already on its way, which the client would see as a reset; an idle one is
    /// closed by the keep-alive timer instead, as it would be at any time.
    func shutdownGracefully() {
        closeAfterResponse = true
    }
}
