import Glibc
import NIOCore
import NIOEmbedded
import XCTest
@testable import SrvCore

/// One client connection to a worker's HTTP side, in process: the worker's own
/// `HTTPConnection` on an `EmbeddedChannel`, in front of `TestApp`. What the test sends is
/// what a client's socket would deliver; `output()` is every byte the connection wrote, as
/// the client would read it (file bodies included). Time moves only when the test says so
/// (`advance`): the event loop's clock is the connection's clock.
final class TestConnection {
    let loop = EmbeddedEventLoop()
    let channel: EmbeddedChannel
    let worker: WorkerServer
    /// The connection's socket as the kernel would report it: what the client has not taken
    /// yet (`unsent`), and a count that moves whenever it takes some (`progress`).
    let socket = FakeSocket()
    /// Everything written so far and not yet returned by `output()`.
    private var written: [UInt8] = []

    init(settings: Settings = Settings(), mount: String = "", plugin: Plugin = TestApp.plugin(),
         local: SocketAddress? = nil, remote: SocketAddress? = nil) throws {
        worker = TestApp.worker(settings: settings, mount: mount, plugin: plugin, group: loop, clock: .of(loop),
                                socketView: SocketView(descriptor: { _ in FakeSocket.descriptor },
                                                       unsentBytes: { [socket] _ in socket.unsent },
                                                       sendProgress: { [socket] _ in socket.progress },
                                                       unreadBytes: { [socket] _ in socket.unread }))
        channel = EmbeddedChannel(loop: loop)
        channel.localAddress = try local ?? SocketAddress(ipAddress: "127.0.0.1", port: 8000)
        channel.remoteAddress = try remote ?? SocketAddress(ipAddress: "127.0.0.1", port: 40000)
        try channel.setOption(ChannelOptions.allowRemoteHalfClosure, value: true).wait()
        try channel.connect(to: channel.remoteAddress!).wait()
        try worker.addConnectionHandlers([FileRegionReader()], to: channel)
    }

    deinit {
        _ = try? channel.finish(acceptAlreadyClosed: true)
        worker.shutdownGracefully(timeout: 0)
        loop.advanceTime(by: .seconds(1))
        worker.waitUntilStopped()
    }

    /// Delivers `text` as one read from the socket.
    func send(_ text: String, file: StaticString = #filePath, line: UInt = #line) {
        send(Array(text.utf8), file: file, line: line)
    }

    func send(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
        guard channel.isActive else { return XCTFail("sent to a closed connection", file: file, line: line) }
        XCTAssertNoThrow(try channel.writeInbound(channel.allocator.buffer(bytes: bytes)), file: file, line: line)
    }

    /// The client shut down its sending side (`shutdown(SHUT_WR)`).
    func halfClose() {
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    /// Moves the event loop's clock (timers fire).
    func advance(seconds: Double) {
        loop.advanceTime(by: .nanoseconds(Int64(seconds * 1e9)))
    }

    var isOpen: Bool { channel.isActive }

    /// The bytes written since the last call, as text.
    func output() -> String {
        String(decoding: outputBytes(), as: UTF8.self)
    }

    func outputBytes() -> [UInt8] {
        loop.run()
        while let data = try? channel.readOutbound(as: IOData.self) {
            switch data {
            case .byteBuffer(let b): written += b.readableBytesView
            case .fileRegion: XCTFail("a file region passed FileRegionReader")
            }
        }
        defer { written = [] }
        return written
    }

    /// The responses written since the last call, parsed as a client would; each must be
    /// complete, with no byte after the last one.
    func responses(forHEAD: Bool = false, file: StaticString = #filePath, line: UInt = #line) -> [TestResponse] {
        let (responses, leftover) = TestResponse.parse(outputBytes(), headRequests: forHEAD)
        XCTAssertEqual(leftover, 0, "bytes after the last complete response", file: file, line: line)
        for r in responses where !r.complete {
            XCTFail("an incomplete response: \(r.status) \(r.headers), \(r.body.utf8.count) body bytes", file: file, line: line)
        }
        return responses
    }
}

/// The kernel's view of a test connection's socket, which the test sets.
final class FakeSocket {
    /// A descriptor number no test process has open: direct sends are off in the harness
    /// (FileRegionReader is an outbound handler), so nothing is ever sent to it.
    static let descriptor: CInt = 1_000_000
    var unsent = 0
    var progress: UInt64 = 0
    /// Bytes the client sent that wait in the kernel: the worker was too busy to read them.
    var unread = 0
}

/// Reads a file body when it is written, as sendfile would (the connection closes its copy
/// of the descriptor once the write completes, which on an EmbeddedChannel is at the flush).
private final class FileRegionReader: ChannelOutboundHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .fileRegion(let region) = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: region.readableBytes)
        try? region.fileHandle.withUnsafeFileDescriptor { fd in
            var bytes = [UInt8](repeating: 0, count: region.readableBytes)
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(region.readerIndex)) }
            buffer.writeBytes(bytes[0..<max(n, 0)])
        }
        context.write(wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
    }
}

/// One HTTP/1.1 response as a client reads it off the wire.
struct TestResponse {
    var status: Int
    var reason: String
    var headers: [(String, String)]
    var body: String
    /// The body came in chunked transfer coding.
    var chunked = false
    /// Every byte its framing announced arrived (the last chunk, all of Content-Length).
    var complete = true

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// Splits `bytes` into responses, framed as RFC 9112 6.3 says (a HEAD response, and 1xx,
    /// 204 and 304, have no body; chunked; Content-Length; else up to the end). Returns them
    /// and the count of bytes after the last one that do not make a head. A response whose
    /// body falls short of its framing is returned with `complete` false.
    static func parse(_ bytes: [UInt8], headRequests: Bool = false) -> ([TestResponse], leftover: Int) {
        var responses: [TestResponse] = []
        var rest = bytes[...]
        while !rest.isEmpty {
            guard let end = find(rest, "\r\n\r\n") else { break }
            let head = String(decoding: rest[rest.startIndex..<end], as: UTF8.self)
            rest = rest[(end + 4)...]
            var lines = head.components(separatedBy: "\r\n")
            let statusLine = lines.removeFirst()
            let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
            var r = TestResponse(status: Int(parts.count > 1 ? parts[1] : "") ?? -1,
                                 reason: parts.count > 2 ? String(parts[2]) : "", headers: [], body: "")
            for line in lines {
                guard let colon = line.firstIndex(of: ":") else { continue }
                r.headers.append((String(line[..<colon]),
                                  line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
            }
            if (100..<200).contains(r.status) || r.status == 204 || r.status == 304 || headRequests {
                // no body
            } else if r.header("transfer-encoding")?.lowercased() == "chunked" {
                r.chunked = true
                r.complete = false
                var body: [UInt8] = []
                while let lineEnd = find(rest, "\r\n") {
                    let sizeText = String(decoding: rest[rest.startIndex..<lineEnd], as: UTF8.self)
                    guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16) else { break }
                    rest = rest[(lineEnd + 2)...]
                    if size == 0 {
                        guard let trailerEnd = find(rest, "\r\n") else { break }
                        rest = rest[(trailerEnd + 2)...]
                        r.complete = true
                        break
                    }
                    guard rest.count >= size + 2 else { body += rest; rest = rest[rest.endIndex...]; break }
                    body += rest.prefix(size)
                    rest = rest.dropFirst(size + 2)
                }
                r.body = String(decoding: body, as: UTF8.self)
            } else if let length = r.header("content-length").flatMap({ Int($0) }) {
                r.complete = rest.count >= length
                r.body = String(decoding: rest.prefix(length), as: UTF8.self)
                rest = rest.dropFirst(length)
            } else {
                r.body = String(decoding: rest, as: UTF8.self)
                rest = rest[rest.endIndex...]
            }
            responses.append(r)
        }
        return (responses, rest.count)
    }

    private static func find(_ bytes: ArraySlice<UInt8>, _ needle: String) -> Int? {
        let n = Array(needle.utf8)
        guard bytes.count >= n.count else { return nil }
        var i = bytes.startIndex
        while i + n.count <= bytes.endIndex {
            if bytes[i] == n[0] && Array(bytes[i..<(i + n.count)]) == n { return i }
            i += 1
        }
        return nil
    }
}

extension XCTestCase {
    /// A connection to a worker whose settings are srv's defaults changed by `configure`,
    /// serving the test app at `mount`.
    func connection(_ configure: (inout Settings) -> Void = { _ in }, mount: String = "") throws -> TestConnection {
        var settings = Settings()
        configure(&settings)
        return try TestConnection(settings: settings, mount: mount)
    }
}
