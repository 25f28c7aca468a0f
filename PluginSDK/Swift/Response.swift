#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An HTTP response: a status, headers and a body.
///
///     return .html("<h1>Hi</h1>")
///     return .redirect(to: request.scriptName + "/posts/1")
///     return Response(status: 200, headers: [("Content-Type", "text/csv")], body: .bytes(csv))
///
/// srv owns the framing: do not set Connection, Keep-Alive or Transfer-Encoding; srv
/// computes Content-Length for bytes and file bodies (a Content-Length you set must match).
public struct Response {
    /// What follows the headers.
    public enum Body {
        /// No body.
        case empty
        /// These bytes.
        case bytes([UInt8])
        /// Chunks pulled one at a time by srv as the client takes them (back-pressure),
        /// until the iterator returns nil; sent chunked. The iterator runs on srv's event
        /// loop thread after `handle(_:)` returned; empty chunks are skipped.
        case stream(AnyIterator<[UInt8]>)
        /// The contents of the file at `path`, sent by srv with sendfile. When the file
        /// cannot be opened, or is not a regular file, the response becomes 404 Not Found.
        /// A Content-Type is guessed from the extension when none is set.
        case file(path: String)
    }

    /// The status code, 100...999 (three digits); the reason phrase is added for you.
    public var status: Int
    /// The response headers, in order. Names may repeat (Set-Cookie).
    public var headers: [(name: String, value: String)]
    /// The body.
    public var body: Body

    /// A response with the given parts; by default an empty 200 OK.
    public init(status: Int = 200, headers: [(name: String, value: String)] = [], body: Body = .empty) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The first header named `name`, compared case-insensitively, or nil.
    public func header(_ name: String) -> String? {
        headers.first { asciiCaseInsensitiveEquals($0.name, name) }?.value
    }

    /// Replaces every header named `name` (case-insensitively) with one `name: value`.
    public mutating func setHeader(_ name: String, _ value: String) {
        headers.removeAll { asciiCaseInsensitiveEquals($0.name, name) }
        headers.append((name, value))
    }

    /// The status line srv wants: "200 OK".
    public var statusLine: String { "\(status) \(Response.reasonPhrase(for: status))" }

    // MARK: - Factories

    /// `text/plain; charset=utf-8`.
    public static func text(_ text: String, status: Int = 200) -> Response {
        Response(status: status, headers: [("Content-Type", "text/plain; charset=utf-8")],
                 body: .bytes(Array(text.utf8)))
    }

    /// `text/html; charset=utf-8`. Escape what you interpolate (see `escapeHTML(_:)`).
    public static func html(_ html: String, status: Int = 200) -> Response {
        Response(status: status, headers: [("Content-Type", "text/html; charset=utf-8")],
                 body: .bytes(Array(html.utf8)))
    }

    /// `application/json` with `value` encoded by `encoder` (by default a JSONEncoder
    /// with sorted keys, for stable output, that does not escape slashes). Throws the
    /// encoder's error.
    ///
    ///     return try .json(post, status: 201)
    public static func json<T: Encodable>(_ value: T, status: Int = 200,
                                          encoder: JSONEncoder = Response.defaultJSONEncoder()) throws -> Response {
        let bytes: [UInt8] = Array(try encoder.encode(value))
        return .json(encoded: bytes, status: status)
    }

    /// `application/json` with bytes that already are JSON text.
    public static func json(encoded bytes: [UInt8], status: Int = 200) -> Response {
        Response(status: status, headers: [("Content-Type", "application/json")], body: .bytes(bytes))
    }

    /// The encoder `json(_:status:encoder:)` uses by default.
    public static func defaultJSONEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    /// A redirect to `location` (absolute, or a path: include `request.scriptName`).
    /// The default 303 See Other is the answer to a successful form POST; use 301, 302,
    /// 307 or 308 for the others.
    public static func redirect(to location: String, status: Int = 303) -> Response {
        Response(status: status, headers: [("Location", location), ("Content-Type", "text/plain; charset=utf-8")],
                 body: .bytes(Array("See \(location)\n".utf8)))
    }

    /// The file at `path` (see `Body.file(path:)`), with `contentType` or a guessed one.
    public static func file(_ path: String, contentType: String? = nil) -> Response {
        var response = Response(body: .file(path: path))
        if let contentType = contentType { response.headers.append(("Content-Type", contentType)) }
        return response
    }

    /// A plain-text 404 Not Found.
    public static var notFound: Response { .text("Not Found\n", status: 404) }

    // MARK: - Status

    /// The reason phrase of a status code ("Not Found" for 404); a generic one by class
    /// for codes it does not know.
    public static func reasonPhrase(for status: Int) -> String {
        if let phrase = reasonPhrases[status] { return phrase }
        switch status {
        case 100..<200: return "Informational"
        case 200..<300: return "Success"
        case 300..<400: return "Redirection"
        case 400..<500: return "Client Error"
        default: return "Server Error"
        }
    }

    private static let reasonPhrases: [Int: String] = [
        100: "Continue", 101: "Switching Protocols", 103: "Early Hints",
        200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
        204: "No Content", 205: "Reset Content", 206: "Partial Content",
        300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
        304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
        400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
        404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
        407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict",
        410: "Gone", 411: "Length Required", 412: "Precondition Failed",
        413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
        416: "Range Not Satisfiable", 417: "Expectation Failed", 418: "I'm a teapot",
        421: "Misdirected Request", 422: "Unprocessable Content", 423: "Locked",
        424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required",
        428: "Precondition Required", 429: "Too Many Requests",
        431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
        500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
        503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
        507: "Insufficient Storage", 511: "Network Authentication Required",
    ]
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
public func escapeHTML(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out
}
