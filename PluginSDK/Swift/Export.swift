#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SrvGateway
import SrvToolchain

/// Hands `app` to srv: returns the opaque handle that the package's C export
/// (`SRV_SWIFT_APP` from <srv/swift_app.h>) keeps. Call it from a `@_cdecl` factory, which
/// srv's load hook calls once per worker process:
///
///     @_cdecl("blog_app") public func blogApp() -> UnsafeMutableRawPointer { export(Blog()) }
///
/// and in the package's C target: `SRV_SWIFT_APP("blog", "1.0.0", SRV_FLAG_THREAD_SAFE, blog_app);`
/// The handle keeps the application alive for the life of the process.
public func export<A: Application>(_ app: A) -> UnsafeMutableRawPointer {
    Unmanaged<ApplicationBox>.passRetained(ConcreteApplicationBox(app)).toOpaque()
}

// MARK: - The C entry points, declared in <srv/swift_app.h>

/// The load hook of a Swift application: runs `load(_:)`. A thrown error's description
/// becomes srv's refusal message.
@_cdecl("srv_swift_load")
public func srvSwiftLoad(_ handle: UnsafeMutableRawPointer?, _ info: UnsafePointer<srv_server_info>?,
                         _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorSize: Int) -> Int32 {
    guard let handle = handle else {
        copyMessage("the application's factory returned NULL", to: errorBuffer, size: errorSize)
        return SRV_ERROR
    }
    let box = Unmanaged<ApplicationBox>.fromOpaque(handle).takeUnretainedValue()
    do {
        try box.load(info.map { ServerInfo($0) } ?? ServerInfo())
        return SRV_OK
    } catch {
        copyMessage(String(describing: error), to: errorBuffer, size: errorSize)
        return SRV_ERROR
    }
}

/// The unload hook of a Swift application: runs `unload()`.
@_cdecl("srv_swift_unload")
public func srvSwiftUnload(_ handle: UnsafeMutableRawPointer?) {
    guard let handle = handle else { return }
    Unmanaged<ApplicationBox>.fromOpaque(handle).takeUnretainedValue().unload()
}

/// srv_gateway_app of a Swift application: builds a `Request`, calls `handle(_:)` and
/// turns the `Response` into start_response and the body.
@_cdecl("srv_swift_serve")
public func srvSwiftServe(_ handle: UnsafeMutableRawPointer?, _ environ: UnsafePointer<srv_environ>?,
                          _ startResponse: srv_start_response_fn?,
                          _ body: UnsafeMutablePointer<srv_body>?) -> Int32 {
    guard let environ = environ, let startResponse = startResponse, let body = body else { return SRV_ERROR }
    let context = RequestContext(environ: environ)
    guard let handle = handle else {
        context.log("srv SDK: the application was not loaded (its factory returned NULL)")
        context.expire()
        return SRV_ERROR
    }
    let box = Unmanaged<ApplicationBox>.fromOpaque(handle).takeUnretainedValue()
    let request = Request(environ: environ, context: context)
    let response: Response
    do {
        response = try box.handle(request)
    } catch {
        context.log("error in \(request.method) \(request.requestURI): \(String(describing: error))")
        context.expire()
        return SRV_ERROR
    }
    return deliver(response, for: request, startResponse: startResponse, body: body)
}

// MARK: - Delivery

/// Opens a file body, prepares the payload, calls start_response and fills the body.
private func deliver(_ original: Response, for request: Request, startResponse: srv_start_response_fn,
                     body: UnsafeMutablePointer<srv_body>) -> Int32 {
    var response = original
    let context = request.context
    if !(100...999).contains(response.status) {
        context.log("srv SDK: status \(response.status) is not a three-digit code; answering 500")
        response = .text("Internal Server Error\n", status: 500)
    }

    // The payload outlives this call: srv releases it through the body's close.
    let payload: ResponsePayload
    switch response.body {
    case .empty:
        payload = ResponsePayload(context: context, content: .empty)
    case .bytes(let bytes):
        payload = ResponsePayload(context: context, content: .bytes(copyToHeap(bytes)))
    case .stream(let iterator):
        payload = ResponsePayload(context: context, content: .stream(ChunkStream(iterator)))
    case .file(let path):
        switch openRegularFile(path) {
        case .success(let fd):
            if response.header("Content-Type") == nil {
                response.headers.append(("Content-Type", MediaTypes.forPath(path)))
            }
            payload = ResponsePayload(context: context, content: .file(fd))
        case .failure(let failure):
            if let reason = failure.reason { context.log("srv SDK: cannot serve \(path): \(reason)") }
            response = .notFound
            payload = ResponsePayload(context: context, content: .bytes(copyToHeap(Array("Not Found\n".utf8))))
        }
    }

    let write = withCHeaders(response.headers) { headers, count in
        startResponse(response.statusLine, headers, count, nil)
    }
    guard write != nil else {
        // srv refused the status or a header and answers 500 itself. The body stays empty
        // (close NULL): the payload is released when this function returns.
        context.log("srv SDK: srv refused the response (\(response.statusLine), \(response.headers.count) headers)")
        return SRV_ERROR
    }

    var b = body.pointee
    switch payload.content {
    case .empty:
        b.kind = Int32(SRV_BODY_EMPTY.rawValue)
    case .bytes(let buffer):
        b.kind = Int32(SRV_BODY_BYTES.rawValue)
        b.data = UnsafeRawPointer(buffer.baseAddress)
        b.len = buffer.count
    case .stream:
        b.kind = Int32(SRV_BODY_ITER.rawValue)
        b.next = { ctx, data, len in
            Unmanaged<ResponsePayload>.fromOpaque(ctx!).takeUnretainedValue().next(data, len)
        }
    case .file(let fd):
        b.kind = Int32(SRV_BODY_FILE.rawValue)
        b.fd = fd
        b.offset = 0
        b.length = -1
    }
    b.ctx = Unmanaged.passRetained(payload).toOpaque()
    b.close = { ctx in
        guard let ctx = ctx else { return }
        Unmanaged<ResponsePayload>.fromOpaque(ctx).release()
    }
    body.pointee = b
    return SRV_OK
}

/// Calls `body` with the headers as srv_header values whose strings are NUL-terminated
/// copies, valid during the call.
private func withCHeaders<R>(_ headers: [(name: String, value: String)],
                             _ body: (UnsafePointer<srv_header>?, Int) -> R) -> R {
    var total = 0
    for h in headers { total += h.name.utf8.count + h.value.utf8.count + 2 }
    let strings = UnsafeMutablePointer<CChar>.allocate(capacity: max(total, 1))
    defer { strings.deallocate() }
    let array = UnsafeMutablePointer<srv_header>.allocate(capacity: max(headers.count, 1))
    defer { array.deallocate() }
    var offset = 0
    func copy(_ s: String) -> srv_str {
        let start = strings + offset
        var n = 0
        for byte in s.utf8 {
            start[n] = CChar(bitPattern: byte)
            n += 1
        }
        start[n] = 0
        offset += n + 1
        return srv_str(ptr: UnsafePointer(start), len: n)
    }
    for (i, h) in headers.enumerated() {
        (array + i).initialize(to: srv_header(name: copy(h.name), value: copy(h.value)))
    }
    return body(headers.isEmpty ? nil : UnsafePointer(array), headers.count)
}

/// Copies `bytes` to memory that stays put until the payload is released.
private func copyToHeap(_ bytes: [UInt8]) -> UnsafeMutableRawBufferPointer {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
    buffer.copyBytes(from: bytes)
    return UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes.count])
}

/// Opens `path` for a file body: the fd of a regular file, or the reason it cannot be
/// served (nil for the unremarkable "no such file").
private func openRegularFile(_ path: String) -> Result<Int32, OpenFailure> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 {
        let e = errno
        return .failure(OpenFailure(reason: e == ENOENT || e == ENOTDIR ? nil : String(cString: strerror(e))))
    }
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
        close(fd)
        return .failure(OpenFailure(reason: "not a regular file"))
    }
    return .success(fd)
}

private struct OpenFailure: Error {
    var reason: String?
}

/// Writes `message` NUL-terminated into srv's error buffer, cut at a UTF-8 boundary.
private func copyMessage(_ message: String, to buffer: UnsafeMutablePointer<CChar>?, size: Int) {
    guard let buffer = buffer, size > 0 else { return }
    let bytes = Array(message.utf8)
    var cut = min(bytes.count, size - 1)
    if cut < bytes.count {
        while cut > 0 && bytes[cut] & 0xC0 == 0x80 { cut -= 1 }
    }
    for i in 0..<cut { buffer[i] = CChar(bitPattern: bytes[i]) }
    buffer[cut] = 0
}

// MARK: - Boxes

/// The application behind the handle, with its type erased.
class ApplicationBox {
    func load(_ server: ServerInfo) throws {}
    func handle(_ request: Request) throws -> Response { .notFound }
    func unload() {}
}

final class ConcreteApplicationBox<A: Application>: ApplicationBox {
    var app: A
    init(_ app: A) { self.app = app }
    override func load(_ server: ServerInfo) throws { try app.load(server) }
    override func handle(_ request: Request) throws -> Response { try app.handle(request) }
    override func unload() { app.unload() }
}

/// What a response body owns until srv calls close: the request's context (expired on
/// release), and the bytes, the iterator or the file descriptor.
final class ResponsePayload {
    enum Content {
        case empty
        case bytes(UnsafeMutableRawBufferPointer)
        case stream(ChunkStream)
        case file(Int32)
    }

    let context: RequestContext
    let content: Content

    init(context: RequestContext, content: Content) {
        self.context = context
        self.content = content
    }

    /// The body's next: 1 with a chunk, 0 at the end.
    func next(_ data: UnsafeMutablePointer<UnsafeRawPointer?>?, _ len: UnsafeMutablePointer<Int>?) -> Int32 {
        guard case .stream(let stream) = content, let chunk = stream.next() else { return 0 }
        data?.pointee = UnsafeRawPointer(chunk.baseAddress)
        len?.pointee = chunk.count
        return 1
    }

    deinit {
        switch content {
        case .empty, .stream: break
        case .bytes(let buffer): buffer.deallocate()
        case .file(let fd): close(fd)
        }
        context.expire()
    }
}

/// An iterator body: pulls chunks and keeps the current one in memory of its own, valid
/// until the next pull or the release.
final class ChunkStream {
    private var iterator: AnyIterator<[UInt8]>
    private var buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    init(_ iterator: AnyIterator<[UInt8]>) {
        self.iterator = iterator
    }

    /// The next non-empty chunk, or nil at the end.
    func next() -> UnsafeRawBufferPointer? {
        while let chunk = iterator.next() {
            if chunk.isEmpty { continue }
            if buffer.count < chunk.count {
                buffer.deallocate()
                buffer = .allocate(byteCount: chunk.count, alignment: 16)
            }
            buffer.copyBytes(from: chunk)
            return UnsafeRawBufferPointer(rebasing: buffer[0..<chunk.count])
        }
        return nil
    }

    deinit {
        buffer.deallocate()
    }
}

// MARK: - The toolchain stamp

/// The version of the Swift compiler that built this plugin (srv_swift_toolchain in
/// GATEWAY.md). srv compares it with its own before it calls any other code of the
/// plugin, and refuses a plugin from another toolchain: there is one Swift runtime in the
/// process, srv's, and Swift's ABI is not stable on Linux.
@_cdecl("srv_swift_toolchain")
public func srvSwiftToolchain() -> UnsafePointer<CChar> {
    UnsafeRawPointer(swiftToolchainVersion.utf8Start).assumingMemoryBound(to: CChar.self)
}
