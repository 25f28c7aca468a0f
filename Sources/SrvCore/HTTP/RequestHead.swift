// llhttp as SwiftNIO ships it (NIOHTTP1's own parser, module CNIOLLHTTP). srv drives it
// directly instead of through HTTPRequestDecoder: that decoder turns every head into
// Strings, an HTTPHeaders array and an HTTPRequestHead box before srv copies it all again
// into C memory, and it was a quarter of the worker's user-space time (issue 3).
import CNIOLLHTTP
import Glibc

/// A request head as llhttp parses it: the target and the header fields, copied out of
/// the socket's buffers into one reusable byte buffer (a token may span two reads).
/// One per connection, reused for each request; nothing in it allocates per request.
final class RequestHead {
    struct Field {
        var nameStart = 0, nameLength = 0, valueStart = 0, valueLength = 0
    }
    enum Token { case none, target, name, value }

    /// Head bytes srv accepts in all, whatever the per-field limits say.
    static let maxBytes = 1 << 20

    private var bytes: UnsafeMutablePointer<UInt8>
    private var capacity = 1024
    /// Bytes of the target, names and values stored so far.
    private(set) var size = 0
    private(set) var targetLength = 0
    private var fields: UnsafeMutablePointer<Field>
    private var fieldCapacity = 16
    private(set) var fieldCount = 0
    private(set) var token = Token.none

    /// llhttp's method number, version and keep-alive verdict, set when the head is complete.
    private(set) var method: UInt8 = 0
    var versionMajor = 1
    var versionMinor = 1
    var keepAlive = true
    /// The head was parsed completely (false for a request refused while it arrived).
    private(set) var isComplete = false

    init() {
        bytes = .allocate(capacity: capacity)
        fields = .allocate(capacity: fieldCapacity)
    }

    deinit {
        bytes.deallocate()
        fields.deallocate()
    }

    func reset() {
        isComplete = false
        if capacity > 64 * 1024 {
            // One large head does not pin its memory for the connection's lifetime.
            bytes.deallocate()
            capacity = 1024
            bytes = .allocate(capacity: capacity)
        }
        size = 0
        targetLength = 0
        fieldCount = 0
        token = .none
    }

    @inline(__always)
    private func append(_ at: UnsafePointer<CChar>, _ n: Int) {
        if size + n > capacity {
            var newCapacity = capacity * 2
            while newCapacity < size + n { newCapacity *= 2 }
            let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
            grown.update(from: bytes, count: size)
            bytes.deallocate()
            bytes = grown
            capacity = newCapacity
        }
        UnsafeMutableRawPointer(bytes + size).copyMemory(from: at, byteCount: n)
        size += n
    }

    /// The target arrives first, possibly in pieces.
    func appendTarget(_ at: UnsafePointer<CChar>, _ n: Int) {
        append(at, n)
        targetLength += n
        token = .target
    }

    /// Returns true when this piece starts a new field.
    @discardableResult
    func appendName(_ at: UnsafePointer<CChar>, _ n: Int) -> Bool {
        var started = false
        if token != .name {
            if fieldCount == fieldCapacity {
                let grown = UnsafeMutablePointer<Field>.allocate(capacity: fieldCapacity * 2)
                grown.update(from: fields, count: fieldCount)
                fields.deallocate()
                fields = grown
                fieldCapacity *= 2
            }
            fields[fieldCount] = Field(nameStart: size, nameLength: 0, valueStart: size, valueLength: 0)
            fieldCount += 1
            token = .name
            started = true
        }
        append(at, n)
        fields[fieldCount - 1].nameLength += n
        return started
    }

    func appendValue(_ at: UnsafePointer<CChar>, _ n: Int) {
        // llhttp always reports a name first; never index before the first field.
        if fieldCount == 0 { appendName(at, 0) }
        if token != .value {
            fields[fieldCount - 1].valueStart = size
            token = .value
        }
        append(at, n)
        fields[fieldCount - 1].valueLength += n
    }

    /// The target ended (llhttp's on_url_complete). A name ends when its value starts or
    /// ends (an empty value has no data callback, only its end).
    func tokenComplete() { token = .none }

    /// A value ends: without trailing spaces and tabs (RFC 9112 5: they are not part of
    /// it), whether it arrived in one read or several. llhttp already skips the leading
    /// ones, so every stored value is trimmed.
    func valueComplete() {
        if token == .value {
            let f = fields[fieldCount - 1]
            var n = f.valueLength
            while n > 0 && (bytes[f.valueStart + n - 1] == 0x20 || bytes[f.valueStart + n - 1] == 0x09) { n -= 1 }
            fields[fieldCount - 1].valueLength = n
        }
        token = .none
    }

    /// The field being received as the line `name: value` CR LF, the way Gunicorn counts it
    /// against --limit-request-field-size (its flag, so its count).
    var currentFieldSize: Int {
        guard fieldCount > 0 else { return 0 }
        let f = fields[fieldCount - 1]
        return f.nameLength + f.valueLength + 4
    }

    /// Takes what llhttp knows once the head is complete.
    func complete(_ parser: UnsafeMutablePointer<llhttp_t>) {
        method = parser.pointee.method
        methodName = Self.methodName(method)
        versionMajor = Int(parser.pointee.http_major)
        versionMinor = Int(parser.pointee.http_minor)
        keepAlive = c_nio_llhttp_should_keep_alive(parser) != 0
        token = .none
        isComplete = true
    }

    /// llhttp's static name for a method it parsed.
    static func methodName(_ method: UInt8) -> UnsafeRawBufferPointer {
        let name = c_nio_llhttp_method_name(llhttp_method_t(UInt32(method)))!
        return UnsafeRawBufferPointer(start: name, count: strlen(name))
    }

    // MARK: Reading

    var target: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: bytes, count: targetLength) }

    @inline(__always)
    func name(_ i: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: bytes + fields[i].nameStart, count: fields[i].nameLength)
    }

    @inline(__always)
    func value(_ i: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: bytes + fields[i].valueStart, count: fields[i].valueLength)
    }

    var isHEAD: Bool { method == UInt8(HTTP_HEAD.rawValue) }

    /// The method's index in `RequestMetrics.methods` (`otherMethod` before the head is
    /// complete): the master's metrics know names, not llhttp's numbers.
    var metricsMethod: Int {
        guard isComplete else { return RequestMetrics.otherMethod }
        switch UInt32(method) {
        case HTTP_GET.rawValue: return 0
        case HTTP_HEAD.rawValue: return 1
        case HTTP_POST.rawValue: return 2
        case HTTP_PUT.rawValue: return 3
        case HTTP_DELETE.rawValue: return 4
        case HTTP_PATCH.rawValue: return 5
        case HTTP_OPTIONS.rawValue: return 6
        default: return RequestMetrics.otherMethod
        }
    }
    /// The method's name: a static string of llhttp's.
    private(set) var methodName = UnsafeRawBufferPointer(start: nil, count: 0)

    /// The first value of a header (for logs), compared without case.
    func first(_ lowerName: String) -> String? {
        var lowerName = lowerName
        return lowerName.withUTF8 { wanted -> String? in
            for i in 0..<fieldCount {
                let n = name(i)
                guard n.count == wanted.count else { continue }
                if zip(n, wanted).allSatisfy({ $0 | 0x20 == $1 || $0 == $1 }) {
                    return String(decoding: value(i), as: UTF8.self)
                }
            }
            return nil
        }
    }

    var targetString: String { String(decoding: target, as: UTF8.self) }
    var methodString: String { String(decoding: methodName, as: UTF8.self) }
    var versionString: String { "HTTP/\(versionMajor).\(versionMinor)" }
}
