import Foundation
import Glibc
import Logging
import NIOCore
import SrvGateway
@testable import SrvCore

/// An application compiled into the test binary and bound as a plugin's entry point (no
/// dlopen): what it does for a request is the closure a test sets in `handler`. It uses
/// the gateway the way an outside plugin does, from GATEWAY.md: environ's strings, the
/// input stream, start_response, write and the four body kinds.
enum TestApp {
    /// What the application does for one request; each test sets its own (XCTest runs a
    /// class's tests one after another).
    static var handler: (Request) -> Int32 = { $0.respond(body: "hello\n") }

    /// How many times the entry point ran, and how many bodies srv closed.
    static var calls = 0
    static var closes = 0
    /// How many times srv called an iterator body's next.
    static var pulls = 0

    static func reset() {
        handler = { $0.respond(body: "hello\n") }
        calls = 0
        closes = 0
        pulls = 0
    }

    /// The plugin srv's request path calls: an in-process descriptor and entry point.
    static func plugin(name: String = "testapp", threadSafe: Bool = false) -> Plugin {
        let d = UnsafeMutablePointer<srv_descriptor>.allocate(capacity: 1)
        d.initialize(to: srv_descriptor(
            magic: SRV_GATEWAY_MAGIC, abi_major: UInt16(SRV_ABI_MAJOR), abi_minor: 0,
            descriptor_size: UInt32(MemoryLayout<srv_descriptor>.size),
            environ_size: UInt32(MemoryLayout<srv_environ>.size), body_size: UInt32(MemoryLayout<srv_body>.size),
            flags: threadSafe ? SRV_FLAG_THREAD_SAFE : 0, name: strdup(name), version: strdup("1.0"),
            load: nil, unload: nil))
        return Plugin(descriptor: UnsafePointer(d), app: entry, path: "/in-process/lib\(name).so")
    }

    /// A worker's HTTP side serving the test application at `mount` on `group`, logging
    /// nothing below critical.
    static func worker(settings: Settings = Settings(), mount: String = "", plugin: Plugin = TestApp.plugin(),
                       group: EventLoopGroup, clock: ConnectionClock, socketView: SocketView = .kernel) -> WorkerServer {
        var logger = Logger(label: "srv.test")
        logger.logLevel = .critical
        return WorkerServer(settings: settings, apps: [MountedApp(mount: mount, plugin: plugin)], logger: logger,
                            scoreboard: nil, accessLog: nil, generation: 1, multiprocess: false,
                            eventLoopGroup: group, clock: clock, socketView: socketView)
    }

    static let entry: srv_app_fn = { environ, start, body in
        TestApp.calls += 1
        return TestApp.handler(Request(environ: environ!, start: start!, body: body!))
    }

    /// One call of the application, with helpers for what the tests' applications do.
    struct Request {
        let environ: UnsafePointer<srv_environ>
        let start: srv_start_response_fn
        let body: UnsafeMutablePointer<srv_body>

        var method: String { string(environ.pointee.request_method) }
        var scriptName: String { string(environ.pointee.script_name) }
        var pathInfo: String { string(environ.pointee.path_info) }
        var query: String { string(environ.pointee.query_string) }
        var serverProtocol: String { string(environ.pointee.server_protocol) }
        var contentLength: String { string(environ.pointee.content_length) }

        /// The first request header named `name` (case-insensitive), as sent.
        func header(_ name: String) -> String? {
            for i in 0..<environ.pointee.header_count {
                let h = environ.pointee.headers[i]
                if string(h.name).lowercased() == name.lowercased() { return string(h.value) }
            }
            return nil
        }

        /// The whole request body, read from wsgi.input until it returns 0.
        func readBody() -> [UInt8] {
            var all: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = chunk.withUnsafeMutableBytes { environ.pointee.input.pointee.read($0.baseAddress, $0.count) }
                if n <= 0 { return all }
                all += chunk[0..<n]
            }
        }

        /// Calls start_response; the write callable it returns (nil when a rule was broken).
        @discardableResult
        func startResponse(_ status: String = "200 OK", _ headers: [(String, String)] = []) -> srv_write_fn? {
            let strings = headers.flatMap { [strdup($0.0)!, strdup($0.1)!] }
            defer { strings.forEach { free($0) } }
            let fields = (0..<headers.count).map { i in
                srv_header(name: srv_str(ptr: strings[2 * i], len: strlen(strings[2 * i])),
                           value: srv_str(ptr: strings[2 * i + 1], len: strlen(strings[2 * i + 1])))
            }
            return fields.withUnsafeBufferPointer { start(status, $0.baseAddress, $0.count, nil) }
        }

        /// start_response, then the body as bytes (malloc'd, freed by close).
        func respond(_ status: String = "200 OK", _ headers: [(String, String)] = [], body text: String) -> Int32 {
            startResponse(status, headers)
            setBytes(Array(text.utf8))
            return SRV_OK
        }

        func setBytes(_ bytes: [UInt8]) {
            let copy = malloc(max(bytes.count, 1))!
            bytes.withUnsafeBytes { if $0.count > 0 { copy.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            body.pointee.kind = Int32(SRV_BODY_BYTES.rawValue)
            body.pointee.data = UnsafeRawPointer(copy)
            body.pointee.len = bytes.count
            body.pointee.ctx = copy
            body.pointee.close = { ctx in TestApp.closes += 1; free(ctx) }
        }

        /// The body as an iterator over `chunks` (srv pulls them one by one).
        func setIterator(_ chunks: [String]) {
            let state = Unmanaged.passRetained(IteratorState(chunks.map { Array($0.utf8) })).toOpaque()
            body.pointee.kind = Int32(SRV_BODY_ITER.rawValue)
            body.pointee.ctx = state
            body.pointee.next = { ctx, data, len in
                TestApp.pulls += 1
            let it = Unmanaged<IteratorState>.fromOpaque(ctx!).takeUnretainedValue()
                guard it.index < it.chunks.count else { return 0 }
                if it.failAt == it.index { return SRV_ERROR }
                it.current = it.chunks[it.index]
                it.index += 1
                it.current.withUnsafeBytes { data!.pointee = $0.baseAddress; len!.pointee = $0.count }
                return 1
            }
            body.pointee.close = { ctx in
                TestApp.closes += 1
                Unmanaged<IteratorState>.fromOpaque(ctx!).release()
            }
        }

        /// The body as `length` bytes of an open file from `offset`; close closes the fd.
        func setFile(_ fd: Int32, offset: Int64 = 0, length: Int64 = -1) {
            body.pointee.kind = Int32(SRV_BODY_FILE.rawValue)
            body.pointee.fd = fd
            body.pointee.offset = offset
            body.pointee.length = length
            body.pointee.ctx = UnsafeMutableRawPointer(bitPattern: Int(fd) + 1)
            body.pointee.close = { ctx in
                TestApp.closes += 1
                Glibc.close(Int32(Int(bitPattern: ctx) - 1))
            }
        }
    }

    final class IteratorState {
        let chunks: [[UInt8]]
        var index = 0
        var current: [UInt8] = []
        var failAt = -1
        init(_ chunks: [[UInt8]]) { self.chunks = chunks }
    }

    /// A file with `content`, opened for reading and already unlinked.
    static func openFile(_ content: String) -> Int32 {
        var template = Array("/tmp/srv-testapp-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        let bytes = Array(content.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        return fd
    }
}

private func string(_ s: srv_str) -> String {
    guard let p = s.ptr else { return "" }
    return String(decoding: UnsafeRawBufferPointer(start: p, count: s.len), as: UTF8.self)
}
