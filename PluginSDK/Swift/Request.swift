import SrvGateway

/// One HTTP request, as srv's environ describes it (PEP 3333's names in Swift).
///
/// Everything but the body is copied when the request is made; the body is read from
/// srv on first use of `body`, `text` or `form`, which must happen before `handle(_:)`
/// returns (or, for a streamed response, before the stream ends). srv's strings are bytes;
/// they are read as UTF-8 here, invalid sequences becoming U+FFFD.
public struct Request {
    /// REQUEST_METHOD, such as "GET".
    public var method: String
    /// SCRIPT_NAME: where the application is mounted, "" at "/". Prefix it to the links
    /// the application generates.
    public var scriptName: String
    /// PATH_INFO: the rest of the path after `scriptName`, percent-decoded, such as "/posts/1".
    public var path: String
    /// QUERY_STRING: what followed "?", not decoded, "" when absent.
    public var query: String
    /// The request headers in arrival order, names as the client sent them.
    public var headers: [(name: String, value: String)]
    /// CONTENT_TYPE, "" when absent.
    public var contentType: String
    /// The size of the request body in bytes (decoded, for chunked bodies), known before
    /// the body is read: check it to refuse large bodies without reading them.
    public var contentLength: Int
    /// REMOTE_ADDR: the client's address (or the trusted proxy's client).
    public var remoteAddress: String
    /// REMOTE_PORT, "" for Unix sockets.
    public var remotePort: String
    /// wsgi.url_scheme: "http" or "https".
    public var scheme: String
    /// SERVER_NAME.
    public var serverName: String
    /// SERVER_PORT.
    public var serverPort: String
    /// SERVER_PROTOCOL: "HTTP/1.1" or "HTTP/1.0".
    public var serverProtocol: String
    /// REQUEST_URI: the raw request target as the client sent it.
    public var requestURI: String
    /// srv's extension keys ("srv.request_id", "srv.worker_pid", ...), in srv's order.
    public var extensions: [(name: String, value: String)]

    let context: RequestContext

    /// Copies srv's environ.
    init(environ: UnsafePointer<srv_environ>, context: RequestContext) {
        let e = environ.pointee
        method = String(e.request_method)
        scriptName = String(e.script_name)
        path = String(e.path_info)
        query = String(e.query_string)
        contentType = String(e.content_type)
        remoteAddress = String(e.remote_addr)
        remotePort = String(e.remote_port)
        scheme = String(e.url_scheme)
        serverName = String(e.server_name)
        serverPort = String(e.server_port)
        serverProtocol = String(e.server_protocol)
        requestURI = String(e.request_uri)
        headers = pairs(e.headers, e.header_count)
        extensions = pairs(e.extensions, e.extension_count)
        if let input = e.input, input.pointee.length > 0 {
            contentLength = Int(input.pointee.length)
        } else {
            contentLength = 0
        }
        self.context = context
    }

    /// Makes a request by hand, to test an application without srv. `log` writes to
    /// standard error.
    public init(method: String = "GET", path: String = "/", query: String = "",
                headers: [(name: String, value: String)] = [], body: [UInt8] = [],
                scriptName: String = "") {
        self.method = method
        self.scriptName = scriptName
        self.path = path
        self.query = query
        self.headers = headers
        contentType = headers.first { $0.name.lowercased() == "content-type" }?.value ?? ""
        contentLength = body.count
        remoteAddress = "127.0.0.1"
        remotePort = ""
        scheme = "http"
        serverName = "localhost"
        serverPort = "80"
        serverProtocol = "HTTP/1.1"
        requestURI = scriptName + path + (query.isEmpty ? "" : "?" + query)
        extensions = []
        context = RequestContext(body: body)
    }

    /// The first header named `name`, compared case-insensitively (ASCII), or nil.
    public func header(_ name: String) -> String? {
        headers.first { asciiCaseInsensitiveEquals($0.name, name) }?.value
    }

    /// The query string's parameters, percent-decoded ("+" is a space).
    public var queryItems: Parameters { Parameters(urlEncoded: query) }

    /// The first query parameter named `name`, percent-decoded, or nil.
    public func query(_ name: String) -> String? { queryItems[name] }

    /// The request body, read fully from srv on first use and kept.
    public var body: [UInt8] { context.body }

    /// The request body read as UTF-8 (invalid sequences become U+FFFD).
    public var text: String { String(decoding: body, as: UTF8.self) }

    /// The fields of an `application/x-www-form-urlencoded` body ("+" is a space); empty
    /// when the body has another content type.
    public var form: Parameters {
        guard mediaType == "application/x-www-form-urlencoded" else { return Parameters() }
        return Parameters(urlEncoded: body)
    }

    /// The content type without parameters, lowercased: "application/json" for
    /// "Application/JSON; charset=utf-8". "" when absent.
    public var mediaType: String {
        let base = contentType.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return base.trimmingASCIISpaces().lowercased()
    }

    /// Writes `message` to srv's error log (wsgi.errors), prefixed by srv with the
    /// application's name; each line becomes one log line.
    public func log(_ message: String) {
        context.log(message)
    }
}

extension String {
    /// Copies a srv string (invalid UTF-8 becomes U+FFFD).
    init(_ s: srv_str) {
        guard let ptr = s.ptr, s.len > 0 else {
            self = ""
            return
        }
        self = String(decoding: UnsafeRawBufferPointer(start: ptr, count: s.len), as: UTF8.self)
    }

    /// The string without leading and trailing spaces and tabs.
    func trimmingASCIISpaces() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }),
              let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}

extension Substring {
    func trimmingASCIISpaces() -> String { String(self).trimmingASCIISpaces() }
}

/// Copies srv's header (or extension) array.
private func pairs(_ headers: UnsafePointer<srv_header>?, _ count: Int) -> [(name: String, value: String)] {
    guard let headers = headers, count > 0 else { return [] }
    return UnsafeBufferPointer(start: headers, count: count).map { (String($0.name), String($0.value)) }
}

/// Compares two header names ignoring ASCII case.
func asciiCaseInsensitiveEquals(_ a: String, _ b: String) -> Bool {
    let a = a.utf8, b = b.utf8
    guard a.count == b.count else { return false }
    return zip(a, b).allSatisfy { x, y in
        x == y || (x | 0x20 == y | 0x20 && (x | 0x20) >= UInt8(ascii: "a") && (x | 0x20) <= UInt8(ascii: "z"))
    }
}
