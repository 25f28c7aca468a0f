import CNIOLLHTTP
import CSrvSystem
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import SrvGateway

/// One client connection: where a request enters, meets the plugin, and its response leaves.
///
/// The pipeline is lean on purpose: this handler drives llhttp (NIO's HTTP/1 parser)
/// straight on the socket's bytes, copying the head into a reusable buffer and then once
/// into the request slot's C memory, and writes each response as one pre-formatted buffer.
/// Requests are answered strictly in order: llhttp pauses after each complete message; while
/// a response is still streaming (an iterator or file body, or an app running on
/// --threads) the rest of the input waits in `pending` and reads stop, so a client cannot
/// make srv buffer without bound.
final class HTTPConnection: ChannelInboundHandler, RequestSlot.InlineOutput {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = IOData

    enum Phase {
        /// Waiting for (or reading) a request head.
        case idle
        /// Reading the body of the request in `slot`.
        case readingBody
        /// The body of a request nobody will see (404): dropped until the message ends.
        case discardingBody(status: Int, message: String)
        /// The app or the response is still busy; further input waits.
        case responding
        /// The connection is closing; input is ignored.
        case closing
    }

    let worker: WorkerServer
    /// The channel, for the liveness check before each direct send (`context.channel`
    /// costs two atomic reference-count operations more). The pipeline drops this handler
    /// when the channel closes, which ends the reference cycle.
    private let channel: Channel
    private var info: ConnectionInfo!
    private var phase = Phase.idle
    private var slot: RequestSlot?
    private let head = RequestHead()
    private let parser = UnsafeMutablePointer<llhttp_t>.allocate(capacity: 1)
    /// Input that arrived while a response was in progress, parsed when it is done.
    private var pending: ByteBuffer?
    /// The buffer llhttp is parsing (the caller's, valid during `c_nio_llhttp_execute`), so
    /// that body callbacks can slice it without copying. A pointer, not a copy: a copy
    /// would retain and release the buffer's storage on every read.
    private var input: UnsafeMutablePointer<ByteBuffer>?
    private var parsing = false
    /// Why a parser callback stopped the parser: srv's answer to the request.
    private var refusal: (status: Int, message: String)?
    /// A chunk-size line comes next in the input (llhttp paused before it): its chunk
    /// extensions' whitespace is closed up first (RequestValidation.closeUpChunkExtensions).
    private var chunkLineAhead = false
    /// The parser paused for `chunkLineAhead`, not at the end of a message.
    private var pausedForChunkLine = false
    /// Input whose meaning the next read decides, parsed with it: the start of a chunk-size
    /// line or of a request line, or the end of an incomplete head
    /// (RequestValidation.spaceTrailingTabs).
    private var heldInput: ByteBuffer?
    /// llhttp is inside a message (from its first byte to its end).
    private var inMessage = false
    /// The longest request line held back whole (beyond it, llhttp's 414 decides).
    private var maxRequestLine: Int { worker.limits.line > 0 ? worker.limits.line + 16 : RequestHead.maxBytes }
    /// The chunk llhttp is reading is the last one (size 0): trailers follow, not a size line.
    private var lastChunk = false
    /// After an Upgrade or CONNECT request srv answers, then reads nothing more.
    private var upgraded = false
    /// The client shut down its sending side (or closed): what it sent is still answered,
    /// then the connection closes.
    private var inputClosed = false
    /// autoRead is off while a response streams or the app runs on a thread: pipelined
    /// input then waits in the socket, not in srv's memory. Toggled only on those paths,
    /// so an inline response costs nothing extra.
    private var readsPaused = false
    /// Responses waiting for the next flush (the end of the read that asked for them, or
    /// the end of an asynchronous response): pipelined answers leave in one send.
    private var out = OutBuffer(capacity: 2048)
    /// Responses may go straight to the socket: no outbound handler sits in front of this
    /// one (WorkerServer.addConnectionHandlers), so a direct send skips none.
    let directWrites: Bool
    /// The socket's descriptor, for direct sends and the kernel's send queue (ChannelSocket).
    private enum DirectSocket { case notLookedUp, found(CInt), unavailable }
    private var socketState = DirectSocket.notLookedUp
    /// Writes handed to NIO and not yet complete. While there are any, flushes go through
    /// NIO as well, behind them, so that no direct send overtakes a queued write.
    private var nioWrites = 0
    /// The send progress the idle timer saw last, and since when (CoarseClock).
    private var sendProgress: (value: UInt64, since: UInt64)?
    private var requests = 0
    /// The connection closes after the response in progress (or the next one): an upgrade,
    /// framing HTTP/1.0 cannot reuse, a graceful stop, or --keep-alive 0.
    private var closeAfterResponse: Bool
    /// When a request last began or ended (CoarseClock): the idle timer's reference.
    private var lastActivity: UInt64
    /// The idle timer last saw response bytes in the kernel's send queue: the queue drained
    /// at some moment since, so the keep-alive period starts over when it is seen empty.
    private var kernelQueueSeen = false
    private var idleTimer: Scheduled<Void>?
    private var requestStart = timespec()
    /// When the request began (monotonic ns), for the duration histogram (--metrics-bind).
    private var requestStartNanos: UInt64 = 0
    private var iterating = false
    private var tornDown = false
    /// The app is running on a --threads pool thread with the current slot.
    private var appRunning = false
    /// Strong on purpose (weak references put objects on Swift's slow refcount path);
    /// cleared when the channel goes inactive.
    private var context: ChannelHandlerContext?

    init(worker: WorkerServer, channel: Channel, directWrites: Bool) {
        self.worker = worker
        self.channel = channel
        self.directWrites = directWrites
        self.lastActivity = worker.clock.now()
        self.closeAfterResponse = !worker.keepsAlive
        c_nio_llhttp_init(parser, HTTP_REQUEST, Self.parserSettings)
        // Any HTTP/1.x version reaches startRequest, which serves a higher minor as 1.1
        // (RFC 9110 2.5) and answers another major with 505.
        c_nio_llhttp_set_lenient_version(parser, 1)
        // BWS before a chunk extension's ";" (RFC 9112 7.1.1).
        c_nio_llhttp_set_lenient_spaces_after_chunk_size(parser, 1)
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        parser.deallocate()
        out.deallocate()
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
        pending = nil
        // A slot whose app still runs on a pool thread is released when it returns.
        if let slot = slot, !appRunning { worker.releaseSlot(slot) }
        slot = nil
        phase = .closing
        worker.connectionClosed(self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        switch phase {
        case .closing: return
        case .responding: stash(&buffer)
        default: if pending != nil { stash(&buffer) } else { parse(&buffer, context: context) }
        }
        assert(invariantsHold, invariantsDescription)
    }

    private func stash(_ buffer: inout ByteBuffer) {
        if upgraded || buffer.readableBytes == 0 { return }
        if pending == nil { pending = buffer } else { pending!.writeBuffer(&buffer) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let proxied = event as? ProxyProtocolDecoder.Proxied {
            info = ConnectionInfo(local: proxied.destination ?? context.channel.localAddress, remote: proxied.source,
                                  forwardedAllow: worker.settings.forwardedAllowIPs)
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosed = true
            closeIfInputDone(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Not passed on: this is the pipeline's last handler, and the tail does nothing with it.
    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context: context)
        assert(invariantsHold, invariantsDescription)
    }

    // MARK: - Invariants (checked in debug builds)

    /// The fields that must agree whatever the connection is doing. Checked with `assert`
    /// after each event, so the unit tests (debug builds) catch a transition that breaks
    /// one; release builds do not pay for it.
    private var invariantsHold: Bool {
        // A request runs on a pool thread, or its body streams, only while responding (or
        // after the connection closed under it).
        if appRunning || iterating {
            switch phase { case .responding, .closing: break; default: return false }
        }
        switch phase {
        case .idle:
            // Between requests or in a head: no request, nothing streaming or running.
            return slot == nil && !iterating && !appRunning
        case .readingBody:
            return slot != nil && !iterating
        case .discardingBody:
            return slot == nil
        case .responding:
            // The request being answered keeps its slot until it is finished.
            return slot != nil
        case .closing:
            return true
        }
    }

    private var invariantsDescription: String {
        "connection invariants broken: phase \(phase), slot \(slot == nil ? "nil" : "set"), appRunning \(appRunning), iterating \(iterating), pending \(pending?.readableBytes ?? -1), inputClosed \(inputClosed)"
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
        // A client that resets or leaves is ordinary; anything else is srv's own failure
        // and the operator must see why a connection was dropped.
        if !Self.isPeerGone(error) {
            worker.log(.warning, "closing the connection from \(info.remoteAddress): \(error)")
        }
        if case .responding = phase {} else { context.close(promise: nil) }
        phase = .closing
    }

    /// True for the errors that mean the peer went away (reset, broken pipe, timed out):
    /// those are the client's doing, not srv's.
    static func isPeerGone(_ error: Error) -> Bool {
        if let io = error as? IOError {
            return [ECONNRESET, EPIPE, ETIMEDOUT, ENOTCONN, ECONNABORTED].contains(io.errnoCode)
        }
        return error is ChannelError
    }

    // MARK: - Parsing

    /// Feeds `buffer` to llhttp. It pauses after each complete message, which is then
    /// answered; parsing goes on while the answer was immediate, and what is left waits
    /// in `pending` while an answer is still in progress.
    private func parse(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) {
        parsing = true
        defer {
            parsing = false
            // A streamed response may have finished inside the loop (a file or iterator
            // body that went out at once): reads paused for it start again here.
            if takesInput { resumeReads(context: context) }
        }
        if var held = heldInput {
            heldInput = nil
            held.writeBuffer(&buffer)
            buffer = held
        }
        while buffer.readableBytes > 0 {
            // srv serves no other protocol: after an Upgrade or CONNECT request (and its
            // body, which may come in later reads) the rest is dropped.
            if upgraded { if case .readingBody = phase {} else { return } }
            if chunkLineAhead {
                switch RequestValidation.closeUpChunkExtensions(in: &buffer) {
                case .ready: break
                case .incomplete:
                    heldInput = buffer
                    return
                case .whitespaceAfterSize:
                    refusal = (400, "whitespace after a chunk size is allowed only before a chunk extension's ';' (RFC 9112 7.1.1)")
                    parseFailed(HPE_INVALID_CHUNK_SIZE, input: buffer, context: context)
                    return
                }
                chunkLineAhead = false
            }
            // Between messages or inside a head: trailing tabs of field values become
            // spaces, which llhttp reads as the optional whitespace they are (RFC 9112 5),
            // and what the next read decides waits for it. A request line reaches llhttp
            // whole, its LF included: its answer (400 for a malformed line, 501 for an
            // unknown method) needs all of it, wherever the client's writes split it.
            if case .idle = phase {
                let undecided = RequestValidation.spaceTrailingTabs(in: &buffer)
                if !inMessage, RequestValidation.requestLineIncomplete(buffer, decided: buffer.readableBytes - undecided,
                                                                       maxLine: maxRequestLine) {
                    heldInput = buffer
                    return
                }
                if undecided > 0 {
                    heldInput = buffer.getSlice(at: buffer.writerIndex - undecided, length: undecided)
                    buffer.moveWriterIndex(to: buffer.writerIndex - undecided)
                    if buffer.readableBytes == 0 { return }
                }
            }
            var consumed = 0
            let rc = withUnsafeMutablePointer(to: &buffer) { buffer -> llhttp_errno_t in
                input = buffer
                defer { input = nil }
                return buffer.pointee.withUnsafeReadableBytes { raw -> llhttp_errno_t in
                    let rc = c_nio_llhttp_execute(parser, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
                    if rc == HPE_OK {
                        consumed = raw.count
                    } else if let stop = c_nio_llhttp_get_error_pos(parser) {
                        consumed = UnsafeRawPointer(stop) - raw.baseAddress!
                    }
                    return rc
                }
            }
            switch rc {
            case HPE_OK:
                return
            case HPE_PAUSED where pausedForChunkLine:
                buffer.moveReaderIndex(forwardBy: consumed)
                c_nio_llhttp_resume(parser)
                pausedForChunkLine = false
                chunkLineAhead = true
            case HPE_PAUSED, HPE_PAUSED_UPGRADE:
                buffer.moveReaderIndex(forwardBy: consumed)
                c_nio_llhttp_resume(parser)
                inMessage = false
                messageComplete(context: context)
                if !takesInput {
                    if case .responding = phase { stash(&buffer) }
                    return
                }
            default:
                parseFailed(rc, input: buffer, context: context)
                return
            }
        }
    }

    private static let parserSettings: UnsafeMutablePointer<llhttp_settings_t> = {
        let s = UnsafeMutablePointer<llhttp_settings_t>.allocate(capacity: 1)
        c_nio_llhttp_settings_init(s)
        s.pointee.on_message_begin = { p in HTTPConnection.with(p) { $0.messageBegin() } }
        s.pointee.on_url = { p, at, n in HTTPConnection.with(p) { $0.targetData(at!, n) } }
        s.pointee.on_url_complete = { p in HTTPConnection.with(p) { $0.targetComplete(p!) } }
        s.pointee.on_header_field = { p, at, n in HTTPConnection.with(p) { $0.nameData(at!, n) } }
        // No on_header_field_complete: RequestHead sees a name end when its value (or the
        // value's end) arrives, which saves a callback per field.
        s.pointee.on_header_value = { p, at, n in HTTPConnection.with(p) { $0.valueData(at!, n) } }
        s.pointee.on_header_value_complete = { p in
            HTTPConnection.with(p) { c in
                c.head.valueComplete()
                return c.head.isComplete ? c.trailerFieldComplete() : 0
            }
        }
        s.pointee.on_headers_complete = { p in HTTPConnection.with(p) { $0.headersComplete(p!) } }
        s.pointee.on_body = { p, at, n in HTTPConnection.with(p) { $0.bodyData(at!, n) } }
        s.pointee.on_chunk_header = { p in HTTPConnection.with(p) { $0.chunkHeader(p!) } }
        s.pointee.on_chunk_complete = { p in HTTPConnection.with(p) { $0.chunkComplete() } }
        s.pointee.on_message_complete = { p in
            // As NIO's decoder does (llhttp issue 202): no stale length for the next message.
            p!.pointee.content_length = 0
            return Int32(HPE_PAUSED.rawValue)
        }
        return s
    }()

    /// The connection a callback belongs to, without retaining it (it owns the parser).
    @inline(__always)
    private static func with(_ p: UnsafeMutablePointer<llhttp_t>?, _ body: (HTTPConnection) -> Int32) -> Int32 {
        Unmanaged<HTTPConnection>.fromOpaque(p!.pointee.data)._withUnsafeGuaranteedRef(body)
    }

    private func refuse(_ status: Int, _ message: String) -> Int32 {
        refusal = (status, message)
        return -1
    }

    private func messageBegin() -> Int32 {
        inMessage = true
        head.reset()
        if refusal != nil { refusal = nil }
        lastActivity = worker.clock.now()
        if worker.accessLog != nil { clock_gettime(CLOCK_REALTIME, &requestStart) }
        if worker.metricsPage != nil { requestStartNanos = Instant.now().nanoseconds }
        return 0
    }

    private func targetData(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        head.appendTarget(at, n)
        let limit = worker.limits.line
        if limit > 0 && head.targetLength > limit {
            return refuse(414, "the request line is longer than the limit of \(limit) bytes (--limit-request-line)")
        }
        return checkHeadSize(414)
    }

    private func targetComplete(_ p: UnsafeMutablePointer<llhttp_t>) -> Int32 {
        head.tokenComplete()
        let limit = worker.limits.line
        // The method, two spaces and "HTTP/1.x".
        let length = RequestHead.methodName(p.pointee.method).count + head.targetLength + 10
        if limit > 0 && length > limit {
            return refuse(414, "the request line is \(length) bytes, longer than the limit of \(limit) (--limit-request-line)")
        }
        return 0
    }

    private func nameData(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        let limit = worker.limits.fields
        if head.appendName(at, n), limit > 0 && head.fieldCount > limit {
            return refuse(431, "the request has more than \(limit) header fields (--limit-request-fields)")
        }
        return checkFieldSize()
    }

    /// A field of a chunked body's trailer section ended (fields after the head), where
    /// framing, routing and request-modifier fields must not appear (RFC 9110 6.5.1).
    private func trailerFieldComplete() -> Int32 {
        if head.fieldCount > 0, RequestValidation.isForbiddenInTrailer(head.name(head.fieldCount - 1)) {
            let name = String(decoding: head.name(head.fieldCount - 1).prefix(64), as: UTF8.self)
            return refuse(400, "the trailer section has the field \(name), which a trailer must not carry (RFC 9110 6.5.1)")
        }
        return 0
    }

    private func valueData(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        head.appendValue(at, n)
        return checkFieldSize()
    }

    @inline(__always)
    private func checkFieldSize() -> Int32 {
        let limit = worker.limits.fieldSize
        if limit > 0 && head.currentFieldSize > limit {
            let name = String(decoding: head.name(head.fieldCount - 1).prefix(64), as: UTF8.self)
            return refuse(431, "header field \(name) is larger than the limit of \(limit) bytes (--limit-request-field-size)")
        }
        return checkHeadSize(431)
    }

    /// Whatever the per-field limits say, srv bounds a whole head (`RequestHead.maxBytes`).
    private func checkHeadSize(_ status: Int) -> Int32 {
        head.size > RequestHead.maxBytes
            ? refuse(status, "the request head is larger than srv accepts (\(RequestHead.maxBytes) bytes)") : 0
    }

    private func headersComplete(_ p: UnsafeMutablePointer<llhttp_t>) -> Int32 {
        head.complete(p)
        if p.pointee.upgrade != 0 {
            // Upgrade or CONNECT: srv speaks no other protocol. The app answers the request
            // (it sees HTTP_UPGRADE), with Connection: close; nothing after it is read.
            upgraded = true
            closeAfterResponse = true
        }
        guard startRequest() else { return -1 }
        return UInt32(p.pointee.flags) & F_CHUNKED.rawValue != 0 ? pauseForChunkLine() : 0
    }

    /// Stops llhttp where a chunk-size line starts, so that `parse` can close up the
    /// line's extension whitespace before llhttp reads it.
    private func pauseForChunkLine() -> Int32 {
        lastChunk = false
        pausedForChunkLine = true
        return Int32(HPE_PAUSED.rawValue)
    }

    private func chunkComplete() -> Int32 {
        lastChunk ? 0 : pauseForChunkLine()
    }

    private func bodyData(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        // A body that keeps arriving is not idle (--body-timeout times the pauses).
        lastActivity = worker.clock.now()
        guard case .readingBody = phase, let slot = slot else { return 0 }
        let limit = worker.limits.body
        if slot.requestBody.length + n > limit {
            return refuse(413, "the request body is larger than the limit of \(limit) bytes (--limit-request-body)")
        }
        let input = self.input!
        let offset = input.pointee.withUnsafeReadableBytes { UnsafeRawPointer(at) - $0.baseAddress! }
        var chunk = input.pointee.getSlice(at: input.pointee.readerIndex + offset, length: n)!
        do { try slot.requestBody.append(&chunk) } catch {
            worker.log(.error, "\(error)")
            return refuse(500, "srv could not store the request body")
        }
        return 0
    }

    /// A chunk's size is known before its bytes: a chunk that would take the body past
    /// --limit-request-body is refused before any of it is read or spooled, as a
    /// Content-Length over the limit is.
    private func chunkHeader(_ p: UnsafeMutablePointer<llhttp_t>) -> Int32 {
        let announced = p.pointee.content_length
        lastChunk = announced == 0
        guard case .readingBody = phase, let slot = slot else { return 0 }
        let limit = worker.limits.body
        if announced > UInt64(limit) || slot.requestBody.length + Int(announced) > limit {
            return refuse(413, "the request body is larger than the limit of \(limit) bytes (--limit-request-body): a chunk of \(announced) bytes follows \(slot.requestBody.length)")
        }
        return 0
    }

    /// A framing error, or a callback's refusal: answer it, then close. llhttp stops at
    /// the error for good, so no byte after it reaches an application.
    private func parseFailed(_ rc: llhttp_errno_t, input: ByteBuffer, context: ChannelHandlerContext) {
        let status: Int, message: String
        if let r = refusal {
            (status, message) = r
        } else if rc == HPE_INVALID_METHOD, let method = Self.unknownMethod(in: input) {
            (status, message) = (501, "the method \(method) is not implemented; srv serves the methods of RFC 9110 and WebDAV's")
        } else {
            (status, message) = Self.describe(rc, reason: c_nio_llhttp_get_error_reason(parser).map { String(cString: $0) } ?? "")
            worker.log(.info, "rejected a request from \(info?.remoteAddress ?? "?") with \(status): \(message)")
        }
        refusal = nil
        recycleSlot()
        reject(status: status, message: message, context: context)
    }

    /// The method of a request llhttp refused as an unknown method, when the request line is
    /// otherwise well formed (then the answer is 501, RFC 9110 9.1); nil for a malformed
    /// request line (400). A message starts at the beginning of the input llhttp was given
    /// (it pauses after each one), and its request line arrives whole.
    private static func unknownMethod(in input: ByteBuffer) -> String? {
        input.withUnsafeReadableBytes { raw -> String? in
            guard let method = RequestValidation.methodOfWellFormedLine(raw) else { return nil }
            return String(decoding: method.prefix(32), as: UTF8.self)
        }
    }

    static func describe(_ rc: llhttp_errno_t, reason: String) -> (Int, String) {
        switch rc {
        case HPE_INVALID_CONTENT_LENGTH, HPE_UNEXPECTED_CONTENT_LENGTH:
            return (400, "invalid or conflicting Content-Length (also sent with Transfer-Encoding, or repeated)")
        case HPE_INVALID_CHUNK_SIZE: return (400, "invalid chunk size in a chunked body")
        case HPE_INVALID_HEADER_TOKEN, HPE_UNEXPECTED_SPACE:
            return (400, "invalid header name or value (control characters, obsolete line folding or a bad token): \(reason)")
        case HPE_INVALID_VERSION: return (400, "invalid HTTP version; expected HTTP/1.0 or HTTP/1.1")
        case HPE_INVALID_METHOD: return (400, "invalid method")
        case HPE_INVALID_URL: return (400, "invalid request target")
        case HPE_INVALID_TRANSFER_ENCODING: return (400, "invalid Transfer-Encoding: \(reason)")
        default: return (400, "malformed request: \(reason)")
        }
    }

    /// The message ended: call the application, or answer a request nobody will see.
    private func messageComplete(context: ChannelHandlerContext) {
        switch phase {
        case .readingBody:
            dispatch(context: context)
        case .discardingBody(let status, let message):
            phase = .idle
            respondPlain(status: status, message: message, close: !head.keepAlive, context: context)
            requestFinished(context: context)
        default:
            break
        }
    }

    // MARK: - Requests

    /// Checks a complete head and prepares the slot; false (with `refusal` set) when srv
    /// refuses the request.
    private func startRequest() -> Bool {
        if head.versionMajor == 0 {
            refusal = (400, "the request line has no HTTP version; expected HTTP/1.0 or HTTP/1.1")
            return false
        }
        guard head.versionMajor == 1 else {
            refusal = (505, "HTTP version \(head.versionMajor).\(head.versionMinor) is not supported; expected HTTP/1.0 or HTTP/1.1")
            return false
        }
        // A higher minor of HTTP/1 is served as the highest srv implements (RFC 9110 2.5).
        if head.versionMinor > 1 { head.versionMinor = 1 }
        var contentLength: Int?
        var contentLengthCount = 0
        var transferEncoding: UnsafeRawBufferPointer?
        var transferEncodingCount = 0
        var expect: UnsafeRawBufferPointer?
        var forwardedFor: String?, forwardedProto: String?
        var hostCount = 0
        var host: UnsafeRawBufferPointer?
        var connectionClose = false, connectionKeepAlive = false
        let trusted = info.trustedProxy
        for i in 0..<head.fieldCount {
            let name = head.name(i), value = head.value(i)
            switch name.count {
            case 14 where HTTPChars.equalsLower(name, "content-length"):
                contentLengthCount += 1
                contentLength = HTTPChars.parseDecimal(value)
                if contentLength == nil || contentLengthCount > 1 {
                    refusal = (400, "invalid Content-Length (expected one decimal number, found \"\(String(decoding: value.prefix(40), as: UTF8.self))\"\(contentLengthCount > 1 ? " repeated" : ""))")
                    return false
                }
            case 17 where HTTPChars.equalsLower(name, "transfer-encoding"):
                transferEncodingCount += 1
                transferEncoding = value
            case 4 where HTTPChars.equalsLower(name, "host"):
                hostCount += 1
                host = value
            case 10 where HTTPChars.equalsLower(name, "connection"):
                // srv reads the tokens itself (trimmed of spaces and tabs): llhttp takes
                // "close\t" for no close.
                let options = RequestValidation.connectionOptions(value)
                connectionClose = connectionClose || options.close
                connectionKeepAlive = connectionKeepAlive || options.keepAlive
            case 6 where HTTPChars.equalsLower(name, "expect"):
                expect = value
            case 15 where trusted && HTTPChars.equalsLower(name, "x-forwarded-for"):
                forwardedFor = String(decoding: value, as: UTF8.self)
            case 17 where trusted && HTTPChars.equalsLower(name, "x-forwarded-proto"):
                forwardedProto = String(decoding: value, as: UTF8.self)
            default: break
            }
        }
        if hostCount > 1 || (hostCount == 0 && head.versionMinor >= 1) {
            refusal = (400, hostCount > 1 ? "a request must have one Host header, found \(hostCount)" : "an HTTP/1.1 request must have a Host header")
            return false
        }
        if let host = host, !RequestValidation.isValidHost(host) {
            refusal = (400, "invalid Host \"\(String(decoding: host.prefix(64), as: UTF8.self))\"; expected host[:port] (RFC 9112 3.2)")
            return false
        }
        // An absolute-form target's authority wins over Host (RFC 9112 3.2.2).
        let authority = RequestValidation.absoluteFormAuthority(head.target)
        if let a = authority, a.contains(UInt8(ascii: "@")) || a.isEmpty || !RequestValidation.isValidHost(a) {
            refusal = (400, "invalid authority \"\(String(decoding: a.prefix(64), as: UTF8.self))\" in the request target; expected host[:port] without userinfo")
            return false
        }
        if memchr(head.target.baseAddress!, 0x23, head.targetLength) != nil {
            refusal = (400, "the request target has a fragment (#...), which a request target never carries (RFC 9112 3.2)")
            return false
        }
        if head.targetLength == 1, head.target[0] == UInt8(ascii: "*"), !HTTPChars.equalsLower(head.methodName, "options") {
            refusal = (400, "the asterisk-form target * is only for OPTIONS (RFC 9112 3.2.4)")
            return false
        }
        head.keepAlive = head.versionMinor >= 1 ? !connectionClose : (connectionKeepAlive && !connectionClose)
        if let te = transferEncoding {
            if transferEncodingCount > 1 || !HTTPChars.equalsLower(te, "chunked") {
                refusal = (501, "Transfer-Encoding \"\(String(decoding: te.prefix(40), as: UTF8.self))\"\(transferEncodingCount > 1 ? " (repeated)" : "") is not supported; srv accepts only chunked")
                return false
            }
            if contentLength != nil {
                refusal = (400, "a request must not have both Content-Length and Transfer-Encoding")
                return false
            }
            // HTTP/1.0 has no Transfer-Encoding: the framing is faulty, so the request is
            // answered and the connection closed (RFC 9112 6.1).
            if head.versionMinor == 0 { closeAfterResponse = true }
        }
        if let length = contentLength, length > worker.limits.body {
            refusal = (413, "the request body is \(length) bytes, larger than the limit of \(worker.limits.body) (--limit-request-body)")
            return false
        }
        if let expect = expect, head.versionMinor >= 1, let context = context {
            guard HTTPChars.equalsLower(expect, "100-continue") else {
                refusal = (417, "unsupported expectation \"\(String(decoding: expect.prefix(40), as: UTF8.self))\"; srv supports only 100-continue")
                return false
            }
            out.append("HTTP/1.1 100 Continue\r\n\r\n")
            flush(context: context)
        }

        requests += 1
        let slot = worker.acquireSlot()
        slot.isHead = head.isHEAD
        slot.bodyFramed = contentLength != nil || transferEncoding != nil
        slot.http10 = head.versionMinor == 0
        slot.keepAlive = head.keepAlive && !closeAfterResponse && !worker.isShuttingDown
        let connection = forwardedFor != nil || forwardedProto != nil
            ? info.forwarded(for: forwardedFor, proto: forwardedProto) : info!
        do {
            guard try slot.prepare(head: head, connection: connection, router: worker.router,
                                   requestID: worker.nextRequestID(), authority: authority) else {
                worker.releaseSlot(slot)
                phase = .discardingBody(status: 404, message: "Not Found")
                return true
            }
        } catch let e as ClientError {
            worker.releaseSlot(slot)
            refusal = e.status
            return false
        } catch {
            worker.releaseSlot(slot)
            refusal = (400, "\(error)")
            return false
        }
        self.slot = slot
        phase = .readingBody
        return true
    }

    /// Calls the application, inline or on the thread pool.
    private func dispatch(context: ChannelHandlerContext) {
        guard let slot = slot else { return }
        slot.bodyComplete()
        slot.begin()
        phase = .responding
        let scoreboard = worker.scoreboardPage
        if let pool = worker.threadPool, !slot.runsInline {
            // The app may write through NIO from its thread: what is queued goes first.
            flush(context: context)
            pauseReads(context: context)
            slot.streamingChannel = context.channel
            appRunning = true
            let loop = context.eventLoop
            pool.submit { _ in
                // Each pool thread has its own scoreboard entry: --timeout sees every
                // request that runs, from the moment a thread runs it.
                let entry = scoreboard?.entry(threaded: true) ?? 0
                scoreboard?.requestBegan(entry: entry, slot: slot.app?.metricsSlot ?? 0, method: slot.methodBytes, target: slot.targetBytes,
                                         id: slot.idBytes)
                let rc = slot.call()
                scoreboard?.requestEnded(entry: entry)
                loop.execute { self.applicationReturned(rc, slot: slot, context: context) }
            }
        } else {
            // Answers to earlier pipelined requests go to the kernel before the app runs: if
            // it crashes the worker, they still reach the client (only a pipelined read pays).
            if out.count > 0 { flush(context: context) }
            scoreboard?.requestBegan(entry: 0, slot: slot.app?.metricsSlot ?? 0, method: slot.methodBytes, target: slot.targetBytes,
                                     id: slot.idBytes)
            slot.inlineOutput = self
            let rc = slot.call()
            slot.inlineOutput = nil
            scoreboard?.requestEnded(entry: 0)
            applicationReturned(rc, slot: slot, context: context)
        }
    }

    private func applicationReturned(_ rc: Int32, slot: RequestSlot, context: ChannelHandlerContext) {
        defer { assert(invariantsHold, invariantsDescription) }
        appRunning = false
        slot.streamingChannel = nil
        if tornDown || self.slot !== slot {
            // The connection closed while the app ran on a pool thread.
            worker.releaseSlot(slot)
            return
        }
        if case .closing = phase { recycleSlot(); return }
        switch slot.finish(rc) {
        case .complete:
            queue(slot.out, context: context)
            requestFinished(context: context)
        case .abort:
            queue(slot.out, context: context)
            flush(context: context)
            phase = .closing
            recycleSlot()
            context.close(promise: nil)
        case .iterate:
            iterating = true
            pauseReads(context: context)
            pump(context: context)
        case .file(let fd, let offset, let length):
            pauseReads(context: context)
            queue(slot.out, context: context)
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
                out.appendHex(length)
                out.append("\r\n")
            }
            // The head (and chunk size) leave first, then NIO sends the file with sendfile.
            let promise = context.eventLoop.makePromise(of: Void.self)
            write(.fileRegion(region), promise: promise, context: context)
            if chunked {
                var suffix = context.channel.allocator.buffer(capacity: 8)
                suffix.writeStaticString("\r\n0\r\n\r\n")
                write(.byteBuffer(suffix), context: context)
            }
            context.flush()
            let watch = watchFileBody(copy, end: offset + length, slot: slot, context: context)
            promise.futureResult.whenComplete { result in
                watch.cancel()
                try? handle.close()
                slot.closeBody()
                if case .failure = result { context.close(promise: nil); return }
                self.requestFinished(context: context)
            }
        }
    }

    /// A file that shrinks while sendfile sends it never ends the send (sendfile keeps
    /// returning 0 and NIO keeps trying): while a file body is in flight its size is checked
    /// every 100 ms, and a file shorter than the range announced aborts the connection (the
    /// client sees a truncated response; the body's close runs).
    private func watchFileBody(_ fd: CInt, end: Int, slot: RequestSlot, context: ChannelHandlerContext) -> RepeatedTask {
        context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { task in
            var st = stat()
            guard fstat(fd, &st) == 0, Int(st.st_size) < end else { return }
            task.cancel()
            self.worker.log(.error, "the file body of \(slot.requestLine) shrank to \(st.st_size) bytes while srv sent \(end); connection aborted")
            context.close(promise: nil)
        }
    }

    /// Pulls an iterator body while the client keeps up (back-pressure through writability).
    private func pump(context: ChannelHandlerContext) {
        guard let slot = slot, iterating else { return }
        defer { assert(invariantsHold, invariantsDescription) }
        do {
            while context.channel.isWritable {
                if try !slot.pull() {
                    iterating = false
                    let complete = slot.endBody()
                    slot.closeBody()
                    writeStreamed(slot, context: context)
                    if !complete {
                        worker.log(.error, "app \(slot.app?.plugin.name ?? "?") broke rule '\(slot.rule ?? "")' on \(slot.requestLine)")
                        context.flush()
                        context.close(promise: nil)
                        phase = .closing
                        return
                    }
                    context.flush()
                    requestFinished(context: context)
                    return
                }
                if slot.out.count >= 16384 { writeStreamed(slot, context: context) }
            }
            writeStreamed(slot, context: context)
            context.flush()
        } catch {
            // The head is gone already: all srv can do is cut the connection.
            iterating = false
            worker.log(.error, "app \(slot.app?.plugin.name ?? "?") broke rule '\((error as? AppFailure)?.rule ?? "\(error)")' on \(slot.requestLine); connection aborted")
            slot.closeBody()
            writeStreamed(slot, context: context)
            context.flush()
            context.close(promise: nil)
            phase = .closing
        }
    }

    /// Hands what the iterator produced so far to NIO, whose writability paces the pump.
    private func writeStreamed(_ slot: RequestSlot, context: ChannelHandlerContext) {
        guard slot.out.count > 0 else { return }
        write(.byteBuffer(slot.out.byteBuffer(context.channel.allocator)), context: context)
        slot.out.clear()
    }

    /// Gives the current request's slot back to the worker's pool.
    private func recycleSlot() {
        if let slot = slot { worker.releaseSlot(slot); self.slot = nil }
    }

    /// Logs the request, recycles the slot and moves on to the next pipelined request.
    private func requestFinished(context: ChannelHandlerContext) {
        var keepAlive = head.keepAlive
        if let slot = slot {
            keepAlive = slot.keepAlive
            if let log = worker.accessLog { logAccess(log, status: slot.status, bytes: slot.bodyBytes, id: slot.requestID) }
            count(status: slot.status, bytes: slot.bodyBytes, app: slot.app)
            worker.releaseSlot(slot)  // recycleSlot() without loading `slot` again
            self.slot = nil
            worker.requestCompleted()
        }
        iterating = false
        lastActivity = worker.clock.now()
        if !keepAlive || closeAfterResponse || worker.isShuttingDown {
            phase = .closing
            pending = nil
            flush(context: context)
            closeAfterWrites(context: context)
            return
        }
        phase = .idle
        drainPending(context: context)
    }

    /// After an asynchronous response: parses the input that waited meanwhile, until a
    /// response goes asynchronous again; then flushes and lets the socket be read again.
    /// Inside `parse` (an immediate response) there is nothing to do: its loop goes on.
    private func drainPending(context: ChannelHandlerContext) {
        guard !parsing else { return }
        if var more = pending {
            pending = nil
            parse(&more, context: context)
        }
        guard takesInput else { return }
        flush(context: context)
        resumeReads(context: context)
        closeIfInputDone(context: context)
    }

    /// After the client half-closed: once every request it sent is answered, closes the
    /// connection (after NIO has sent whatever it still holds). A request left unfinished
    /// can no longer complete and is dropped, as nginx and Gunicorn do.
    private func closeIfInputDone(context: ChannelHandlerContext) {
        guard inputClosed, !parsing, pending == nil, takesInput else { return }
        recycleSlot()  // a request whose body never completes
        phase = .closing
        flush(context: context)
        closeAfterWrites(context: context)
    }

    /// Closes once NIO has sent everything queued before this call.
    private func closeAfterWrites(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(.byteBuffer(context.channel.allocator.buffer(capacity: 0)))).whenComplete { _ in
            context.close(promise: nil)
        }
    }

    /// Between responses or reading a request (not responding, not closing).
    private var takesInput: Bool {
        switch phase {
        case .idle, .readingBody, .discardingBody: return true
        case .responding, .closing: return false
        }
    }

    /// Counts a response for --metrics-bind (RequestMetrics); `app` nil for srv's own.
    @inline(__always)
    private func count(status: Int, bytes: Int, app: MountedApp?) {
        guard let page = worker.metricsPage else { return }
        page.recordRequest(slot: app?.metricsSlot ?? 0, method: head.metricsMethod, status: status,
                           bytes: head.isComplete && head.isHEAD ? 0 : bytes, nanoseconds: Instant.now().nanoseconds &- requestStartNanos)
    }

    private func logAccess(_ log: AccessLog, status: Int, bytes: Int, id: String) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let micros = (now.tv_sec - requestStart.tv_sec) * 1_000_000 + (now.tv_nsec - requestStart.tv_nsec) / 1000
        let complete = head.isComplete
        log.log(AccessRecord(remote: info.remoteAddress, method: complete ? head.methodString : "-",
                             uri: complete ? head.targetString : "-", version: complete ? head.versionString : "-",
                             status: status, bytes: bytes, requestID: id, header: { self.head.first($0) },
                             started: requestStart, durationMicros: micros))
    }

    // MARK: - srv's own answers

    /// Answers a request srv refuses (the app never sees it) and closes the connection.
    private func reject(status: Int, message: String, context: ChannelHandlerContext) {
        respondPlain(status: status, message: message, close: true, context: context)
        if let log = worker.accessLog { logAccess(log, status: status, bytes: message.utf8.count + 1, id: "-") }
        phase = .closing
        pending = nil
        flush(context: context)
        context.close(promise: nil)
    }

    /// srv's own answer; counted for --metrics-bind under srv's slot.
    private func respondPlain(status: Int, message: String, close: Bool, context: ChannelHandlerContext) {
        count(status: status, bytes: message.utf8.count + 1, app: nil)
        out.append(string: "HTTP/1.1 \(status) \(HTTPResponseStatus(statusCode: status).reasonPhrase)\r\nServer: srv\r\n")
        worker.dateCache.write(into: &out)
        let body = message + "\n"
        out.append(string: "Content-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\n")
        if close || closeAfterResponse || worker.isShuttingDown { out.append("Connection: close\r\n") }
        out.append("\r\n")
        if !(head.isComplete && head.isHEAD) { out.append(string: body) }
    }

    // MARK: - Output

    /// Queues (part of) a response; it leaves at the next flush. A large one leaves at once,
    /// from where it was built, rather than being copied.
    private func queue(_ bytes: OutBuffer, context: ChannelHandlerContext) {
        if out.count == 0 && bytes.count > Self.copyLimit {
            transmit(bytes.base, bytes.count, context: context)
        } else {
            out.append(bytes.base, bytes.count)
        }
    }
    private static let copyLimit = 64 * 1024

    /// Sends what is queued (see `transmit`).
    private func flush(context: ChannelHandlerContext) {
        guard out.count > 0 else { return }
        transmit(out.base, out.count, context: context)
        out.reset()
    }

    /// Sends bytes straight to the socket with one send(2) when NIO holds nothing for it
    /// (the usual case), else through NIO behind what it holds. Whatever the socket does not
    /// take at once (a full send buffer, an error) goes to NIO too, which waits for
    /// writability, or reports the error and closes the channel.
    private func transmit(_ bytes: UnsafeRawPointer, _ count: Int, context: ChannelHandlerContext) {
        var sent = 0
        // NIO closes the descriptor and turns isActive false in one step of the event loop
        // (close0 calls out to no handler in between), so while isActive is true here the
        // descriptor is still this connection's, never a number reused by another one.
        if nioWrites == 0, directWrites, let fd = directSocket(context), channel.isActive {
            let n = Glibc.send(fd, bytes, count, CInt(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n == count { return }
            sent = max(n, 0)
        }
        var buffer = context.channel.allocator.buffer(capacity: count - sent)
        buffer.writeBytes(UnsafeRawBufferPointer(start: bytes + sent, count: count - sent))
        nioWrite(.byteBuffer(buffer), promise: nil, context: context)
        context.flush()
    }

    /// A write through NIO (file regions, streamed chunks) after whatever is queued ahead
    /// of it; the caller flushes.
    private func write(_ data: IOData, promise: EventLoopPromise<Void>? = nil, context: ChannelHandlerContext) {
        flush(context: context)
        nioWrite(data, promise: promise, context: context)
    }

    /// Hands `data` to NIO, counted until it completes: no direct send may overtake it,
    /// and a connection with bytes still to send is not idle.
    private func nioWrite(_ data: IOData, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        let done = promise ?? context.eventLoop.makePromise(of: Void.self)
        nioWrites += 1
        done.futureResult.whenComplete { _ in
            self.nioWrites -= 1
            // Idle time counts from the moment the last byte left.
            if self.nioWrites == 0 { self.lastActivity = self.worker.clock.now() }
        }
        context.write(wrapOutboundOut(data), promise: done)
    }

    /// The socket's descriptor, looked up at a connection's second request, so that one
    /// used once (Connection: close, a client that leaves) never pays for it (`now`: at
    /// once, for a large inline write or the idle timer).
    private func directSocket(_ context: ChannelHandlerContext, now: Bool = false) -> CInt? {
        switch socketState {
        case .found(let fd): return fd
        case .unavailable: return nil
        case .notLookedUp:
            guard requests >= 2 || now else { return nil }
            guard let fd = worker.socketView.descriptor(context.channel) else {
                worker.log(.debug, "cannot find the socket of \(context.channel); its responses go through NIO's write path")
                socketState = .unavailable
                return nil
            }
            socketState = .found(fd)
            return fd
        }
    }

    // MARK: - Inline write(): a large body leaves while the app runs

    /// Called from the app's write() on the event loop (inline mode, which blocks the loop
    /// for the app's whole call anyway): sends what the connection holds, then `bytes`,
    /// waiting for the socket with poll(2) so that the worker's memory stays bounded. The
    /// wait is bounded by --timeout (the master kills a request past it in any case).
    /// While NIO holds earlier writes for this connection, the bytes go behind them
    /// through NIO instead: a direct send must not overtake them.
    func sendNow(_ bytes: UnsafeRawPointer, _ count: Int) -> Bool {
        guard let context = context, channel.isActive else { return false }
        guard nioWrites == 0, directWrites, let fd = directSocket(context, now: true) else {
            flush(context: context)
            transmit(bytes, count, context: context)  // behind NIO's writes, or through its handlers
            return true
        }
        if out.count > 0 {
            guard sendBlocking(fd, out.base, out.count) else { return false }
            out.reset()
        }
        return sendBlocking(fd, bytes, count)
    }

    private func sendBlocking(_ fd: CInt, _ bytes: UnsafeRawPointer, _ count: Int) -> Bool {
        var sent = 0
        var waitedSince: UInt64?
        let patience = UInt64(worker.settings.sendTimeout * 1e9)
        while sent < count {
            let n = Glibc.send(fd, bytes + sent, count - sent, CInt(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n > 0 {
                sent += n
                waitedSince = nil
                continue
            }
            guard n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else { return false }
            let now = worker.clock.now()
            if let since = waitedSince, now &- since > patience { return false }
            if waitedSince == nil { waitedSince = now }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&pfd, 1, 1000)
            worker.scoreboardPage?.heartbeat()
        }
        lastActivity = worker.clock.now()
        return true
    }

    // MARK: - Timers and shutdown

    /// Closes a connection idle longer than `worker.idleLimit` (or stuck sending a request).
    /// The timer runs every idle limit, or sooner when that much idle time is
    /// nearly reached (`lastActivity` is coarse, so it may read a few ms short).
    private func armIdleTimer(context: ChannelHandlerContext, in delay: TimeAmount? = nil) {
        let limit = worker.idleLimit
        idleTimer = context.eventLoop.scheduleTask(in: delay ?? limit) {
            guard let context = self.context else { return }
            let idleFor = TimeAmount.nanoseconds(Int64(self.worker.clock.now() &- self.lastActivity))
            let allowed: TimeAmount
            switch self.phase {
            case .idle where self.nioWrites == 0:
                // What NIO wrote may still wait in the kernel for a slow reader: the
                // connection is idle from when that is gone too.
                if let fd = self.directSocket(context, now: true), self.worker.socketView.unsentBytes(fd) > 0 {
                    if self.sendStalled(context: context) {
                        self.worker.log(.warning, "dropped the connection of \(self.info.remoteAddress): the client took no byte of the last response for \(self.worker.settings.sendTimeout) s (--send-timeout)")
                        self.phase = .closing
                        context.close(promise: nil)
                        return
                    }
                    self.kernelQueueSeen = true
                    self.armIdleTimer(context: context, in: self.sendCheckDelay(limit))
                    return
                }
                if self.kernelQueueSeen {
                    // Drained since the last look, perhaps a moment ago: a client that
                    // read the last byte just now gets its whole --keep-alive.
                    self.kernelQueueSeen = false
                    self.lastActivity = self.worker.clock.now()
                    self.armIdleTimer(context: context)
                    return
                }
                allowed = limit
            case .readingBody: allowed = .nanoseconds(Int64(self.worker.settings.bodyTimeout * 1e9))
            default:
                // Idle means nothing left to send: a slow reader keeps its connection,
                // one that takes nothing for --send-timeout is dropped.
                if self.sendStalled(context: context) {
                    self.worker.log(.warning, "dropped the connection of \(self.info.remoteAddress) for \(self.head.methodString) \(self.head.targetString): the client took no byte for \(self.worker.settings.sendTimeout) s (--send-timeout)")
                    self.phase = .closing
                    context.close(promise: nil)
                    return
                }
                self.armIdleTimer(context: context, in: self.sendCheckDelay(limit))
                return
            }
            if idleFor >= allowed, self.hasUnreadInput(context) {
                // The client's next bytes wait in the kernel: the worker's loop was busy
                // (an inline request longer than the limit), so this connection was never
                // idle. Its read comes next; closing now would reset it.
                self.lastActivity = self.worker.clock.now()
                self.armIdleTimer(context: context)
                return
            }
            if idleFor >= allowed {
                if case .readingBody = self.phase {
                    let message = "the request body stalled: no byte for \(self.worker.settings.bodyTimeout) s (--body-timeout)"
                    self.worker.log(.warning, "408 to \(self.info.remoteAddress) for \(self.head.methodString) \(self.head.targetString): \(message)")
                    self.recycleSlot()
                    self.reject(status: 408, message: message, context: context)
                    return
                }
                self.phase = .closing
                context.close(promise: nil)
            } else {
                self.armIdleTimer(context: context, in: min(limit, allowed - idleFor))
            }
        }
    }

    /// Bytes from the client wait in the socket, not yet read.
    private func hasUnreadInput(_ context: ChannelHandlerContext) -> Bool {
        guard let fd = directSocket(context, now: true) else { return false }
        return worker.socketView.unreadBytes(fd) > 0
    }

    /// True when a response has bytes to send (NIO's or the kernel's) and the client took
    /// none of them for --send-timeout. Sampled by the idle timer.
    private func sendStalled(context: ChannelHandlerContext) -> Bool {
        guard let fd = directSocket(context, now: true) else { return false }
        let now = worker.clock.now()
        let waiting = nioWrites > 0 || worker.socketView.unsentBytes(fd) > 0
        let progress = worker.socketView.sendProgress(fd)
        guard waiting, let last = sendProgress, last.value == progress else {
            sendProgress = waiting ? (progress, now) : nil
            return false
        }
        return Double(now &- last.since) / 1e9 >= worker.settings.sendTimeout
    }

    /// When the idle timer next samples a response's send progress: at least twice per
    /// --send-timeout, and just after a stall that began at the last sample reaches it,
    /// so a client that takes nothing is dropped within 1.5 x --send-timeout.
    private func sendCheckDelay(_ limit: TimeAmount) -> TimeAmount {
        let patience = Int64(worker.settings.sendTimeout * 1e9)
        var delay = min(limit, .nanoseconds(patience / 2))
        if let last = sendProgress {
            let left = patience - Int64(worker.clock.now() &- last.since)
            delay = min(delay, .nanoseconds(max(left, 0) + 10_000_000))  // the clock is coarse (a few ms)
        }
        return delay
    }

    /// Graceful shutdown: every connection gets the response to its next request (the one
    /// in progress, or one a keep-alive client is sending right now) with Connection:
    /// close, then closes. Closing an idle keep-alive connection at once would race with a
    /// request already on its way, which the client would see as a reset; an idle one is
    /// closed by the keep-alive timer instead, as it would be at any time.
    func shutdownGracefully() {
        closeAfterResponse = true
        // Without keep-alive, a connection still waiting for its request waits 1 s more,
        // not --body-timeout.
        if !worker.keepsAlive, requests == 0, case .idle = phase, let context = context {
            idleTimer?.cancel()
            armIdleTimer(context: context)
        }
    }
}
