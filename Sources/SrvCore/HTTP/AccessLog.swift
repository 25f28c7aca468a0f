import Glibc

/// Gunicorn's access-log format: `%(atom)s` placeholders. The default is the combined
/// format with the request's id at the end (srv's `%(id)s` atom, srv.request_id), so that
/// an access line and the error lines about the same request can be matched:
/// `%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(id)s`.
public struct AccessLogFormat: Codable, Equatable {
    public var text: String
    public init(_ text: String) { self.text = text }
    public static let combined = AccessLogFormat(#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(id)s"#)

    enum Segment {
        case literal(String)
        case atom(String)
        case requestHeader(String)
    }

    /// Splits the format into literal text and atoms.
    var segments: [Segment] {
        var result: [Segment] = []
        var literal = ""
        var rest = Substring(text)
        while let start = rest.firstRange(of: "%(") {
            literal += rest[..<start.lowerBound]
            let after = rest[start.upperBound...]
            guard let close = after.firstRange(of: ")s") else { break }
            if !literal.isEmpty { result.append(.literal(literal)); literal = "" }
            let name = String(after[..<close.lowerBound])
            if name.hasPrefix("{"), name.hasSuffix("}i") {
                result.append(.requestHeader(String(name.dropFirst().dropLast(2)).lowercased()))
            } else {
                result.append(.atom(name))
            }
            rest = after[close.upperBound...]
        }
        literal += rest
        if !literal.isEmpty { result.append(.literal(literal)) }
        return result
    }
}

/// One finished request, as the access log sees it.
struct AccessRecord {
    var remote: String
    var method: String
    var uri: String
    var version: String
    var status: Int
    var bytes: Int
    /// srv.request_id, or "-" for a request srv refused before it had one.
    var requestID: String
    /// A request header's first value, by lowercase name.
    var header: (String) -> String?
    var started: timespec
    var durationMicros: Int
}

/// Writes access-log lines to a file or standard output ("-"); USR1 reopens the file (log rotation).
public final class AccessLog {
    private let segments: [AccessLogFormat.Segment]
    private let path: String
    private var fd: Int32
    private var buffer: [UInt8] = []

    public init(path: String, format: AccessLogFormat) throws {
        self.path = path
        self.segments = format.segments
        // "-" is standard output, as Gunicorn's --access-logfile - (the error log's "-" is stderr).
        self.fd = path == "-" ? 1 : Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw LogFileError(description: "cannot open access log \(path): \(String(cString: strerror(errno)))") }
    }

    public func reopen() {
        guard path != "-" else { return }
        let fresh = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fresh >= 0 { let old = fd; fd = fresh; Glibc.close(old) }
    }

    func log(_ r: AccessRecord) {
        var line = ""
        for s in segments {
            switch s {
            case .literal(let t): line += t
            case .requestHeader(let name): line += r.header(name) ?? "-"
            case .atom(let a): line += atom(a, r)
            }
        }
        line += "\n"
        buffer.removeAll(keepingCapacity: true)
        buffer.append(contentsOf: line.utf8)
        _ = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    private func atom(_ a: String, _ r: AccessRecord) -> String {
        switch a {
        case "h": return r.remote.isEmpty ? "-" : r.remote
        case "l", "u": return "-"
        case "t": return Self.commonLogTime(r.started)
        case "r": return "\(r.method) \(r.uri) \(r.version)"
        case "m": return r.method
        case "U": return String(r.uri.split(separator: "?", maxSplits: 1).first ?? "")
        case "q": return r.uri.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
        case "H": return r.version
        case "s": return String(r.status)
        case "B": return String(r.bytes)
        case "b": return r.bytes == 0 ? "-" : String(r.bytes)
        case "f": return r.header("referer") ?? "-"
        case "a": return r.header("user-agent") ?? "-"
        case "T": return String(r.durationMicros / 1_000_000)
        case "M": return String(r.durationMicros / 1000)
        case "D": return String(r.durationMicros)
        case "L": return String(fixed: Double(r.durationMicros) / 1e6, decimals: 6)
        case "p": return "<\(getpid())>"
        case "id": return r.requestID
        default: return "-"
        }
    }

    static func commonLogTime(_ t: timespec) -> String {
        var secs = t.tv_sec
        var tm = tm()
        localtime_r(&secs, &tm)
        var buf = [CChar](repeating: 0, count: 64)
        strftime(&buf, 64, "[%d/%b/%Y:%H:%M:%S %z]", &tm)
        return String(cString: buf)
    }
}

struct LogFileError: Error, CustomStringConvertible { let description: String }
