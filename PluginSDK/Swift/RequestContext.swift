#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SrvGateway
import Synchronization

/// The live side of a `Request`: srv's environ while it is valid, and the request body
/// once read. srv's input.read and errors.write are valid until the response body's close
/// (from any thread, one call at a time), so every call goes through the mutex and stops
/// once `expire()` ran. A context made by `Request.init(...)` for tests has no environ.
final class RequestContext: @unchecked Sendable {
    private struct State {
        var environ: UnsafePointer<srv_environ>?
        var body: [UInt8]?
    }

    private let state: Mutex<State>

    init(environ: UnsafePointer<srv_environ>) {
        state = Mutex(State(environ: environ, body: nil))
    }

    init(body: [UInt8]) {
        state = Mutex(State(environ: nil, body: body))
    }

    /// The request body, read from srv's input on first use. Empty once expired unread.
    var body: [UInt8] {
        state.withLock { state in
            if let body = state.body { return body }
            guard let environ = state.environ, let input = environ.pointee.input,
                  let read = input.pointee.read else {
                state.body = []
                return []
            }
            let length = input.pointee.length
            var body: [UInt8] = []
            body.reserveCapacity(length > 0 ? Int(min(length, 1 << 24)) : 0)
            var chunk = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let n = chunk.withUnsafeMutableBytes { read($0.baseAddress, $0.count) }
                if n > 0 {
                    body.append(contentsOf: chunk[0..<n])
                } else {
                    if n < 0 { Self.write(environ, "srv SDK: reading the request body failed after \(body.count) bytes") }
                    break
                }
            }
            state.body = body
            return body
        }
    }

    /// Writes `message` to srv's error log, one call per line. After expiry (or without
    /// srv) it goes to standard error.
    func log(_ message: String) {
        let written: Bool = state.withLock { state in
            guard let environ = state.environ else { return false }
            Self.write(environ, message)
            return true
        }
        if !written {
            var text = message
            if !text.hasSuffix("\n") { text += "\n" }
            fputs(text, stderr)
        }
    }

    /// Called when srv is done with the request: its pointers die now.
    func expire() {
        state.withLock { $0.environ = nil }
    }

    private static func write(_ environ: UnsafePointer<srv_environ>, _ message: String) {
        guard let errors = environ.pointee.errors, let write = errors.pointee.write else { return }
        for line in message.split(separator: "\n") {
            var line = String(line)
            line.withUTF8 { buffer in
                buffer.withMemoryRebound(to: CChar.self) { write($0.baseAddress, $0.count) }
            }
        }
    }
}
