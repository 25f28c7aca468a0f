import Glibc

/// Where to listen: `-b HOST:PORT`, `-b [IPv6]:PORT` or `-b unix:PATH`.
public enum BindAddress: Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// A bare port (`8000`, `:8000`) listens on loopback only: every address of the
    /// machine is for an address that says so (`0.0.0.0:8000`, `[::]:8000`).
    static let loopbackForBarePort = "127.0.0.1"

    public static func parse(_ text: String) -> Result<BindAddress, ParseError> {
        if let scheme = text.firstRange(of: "://") {
            return .failure(ParseError(description: "bind \"\(text)\": expected HOST:PORT, [IPv6]:PORT or unix:PATH without a scheme, found \"\(text[..<scheme.upperBound])\"; write for example -b \(text[scheme.upperBound...].prefix { $0 != "/" })"))
        }
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            if path.isEmpty { return .failure(ParseError(description: "bind \"\(text)\": expected unix:PATH, found no path")) }
            return .success(.unix(path: path))
        }
        var host: String, portText: String
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                return .failure(ParseError(description: "bind \"\(text)\": expected [IPv6]:PORT, found no closing ]"))
            }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else {
                return .failure(ParseError(description: "bind \"\(text)\": expected [IPv6]:PORT, found no port"))
            }
            portText = String(rest.dropFirst())
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
            if host.isEmpty { host = loopbackForBarePort }
        } else {
            host = loopbackForBarePort
            portText = text
        }
        if host.contains("/") || host.contains(" ") {
            return .failure(ParseError(description: "bind \"\(text)\": expected HOST:PORT with a host name or address, found host \"\(host)\" (a Unix socket is unix:PATH)"))
        }
        guard let port = Int(portText), (0...65535).contains(port) else {
            return .failure(ParseError(description: "bind \"\(text)\": expected HOST:PORT with a port from 0 to 65535 (or unix:PATH), found port \"\(portText)\""))
        }
        return .success(.tcp(host: host, port: port))
    }

    public var description: String {
        switch self {
        case .tcp(let h, let p): return h.contains(":") ? "[\(h)]:\(p)" : "\(h):\(p)"
        case .unix(let p): return "unix:\(p)"
        }
    }

    /// The address with what it means, for `--check-config` and the start log: `-b 8000`
    /// and `-b :8000` are 127.0.0.1 (this machine only), `0.0.0.0:8000` every IPv4 address.
    public var explained: String {
        switch self {
        case .tcp("0.0.0.0", _): return "\(description) (every IPv4 address of this machine)"
        case .tcp("::", _): return "\(description) (every IPv6 address of this machine)"
        case .tcp(let h, _) where h.hasPrefix("127.") || h == "::1" || h == "localhost": return "\(description) (this machine only)"
        default: return description
        }
    }
}

/// A listening socket owned by the master for its whole life. Workers get copies at fd 3..
public struct Listener {
    public let fd: Int32
    public let address: BindAddress

    public struct BindError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Creates, binds and listens (SOCK_CLOEXEC: only spawn's explicit dup2 passes it on).
    /// - Parameters:
    ///   - umask: the mode mask of a Unix socket file (its mode is 0777 & ~umask).
    ///   - reusePort: set SO_REUSEPORT (TCP): several sockets share the address and the
    ///     kernel spreads new connections across those that listen.
    ///   - listening: false binds without listening (a reuse-port master's own socket, which
    ///     holds the address but must not take a share of the connections).
    public static func open(_ address: BindAddress, backlog: Int, umask mask: Int = 0, reusePort: Bool = false,
                            listening: Bool = true) throws -> Listener {
        switch address {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw BindError(description: "cannot create a Unix socket: \(String(cString: strerror(errno)))") }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
                close(fd)
                throw BindError(description: "bind unix:\(path): the path is \(bytes.count) bytes, expected fewer than \(MemoryLayout.size(ofValue: addr.sun_path))")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                for (i, b) in bytes.enumerated() { raw[i] = b }
            }
            // A stale socket file from a previous run would make bind fail.
            var st = stat()
            if stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
            // bind creates the socket file with 0777 less the umask: set srv's mask for it.
            let previous = umask(mode_t(mask))
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            umask(previous)
            guard rc == 0 else {
                let e = String(cString: strerror(errno)); close(fd)
                throw BindError(description: "cannot bind unix:\(path): \(e)")
            }
            guard listen(fd, Int32(backlog)) == 0 else {
                let e = String(cString: strerror(errno)); close(fd)
                throw BindError(description: "cannot listen on unix:\(path): \(e)")
            }
            return Listener(fd: fd, address: address)
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
            var result: UnsafeMutablePointer<addrinfo>?
            let gai = getaddrinfo(host, String(port), &hints, &result)
            guard gai == 0, let info = result else {
                throw BindError(description: "bind \(address): cannot resolve \"\(host)\": \(String(cString: gai_strerror(gai)))")
            }
            defer { freeaddrinfo(result) }
            let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw BindError(description: "cannot create a socket: \(String(cString: strerror(errno)))") }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
            if info.pointee.ai_family == AF_INET6 {
                setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
                let e = String(cString: strerror(errno)); close(fd)
                throw BindError(description: "cannot bind \(address): \(e)\(errno == EADDRINUSE ? " (another process listens there; stop it or choose another port with -b)" : "")")
            }
            guard !listening || listen(fd, Int32(backlog)) == 0 else {
                let e = String(cString: strerror(errno)); close(fd)
                throw BindError(description: "cannot listen on \(address): \(e)")
            }
            return Listener(fd: fd, address: address)
        }
    }

    /// The address actually bound (the port the kernel chose for port 0).
    public var boundDescription: String {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard rc == 0 else { return address.description }
        let family = Int32(storage.ss_family)
        guard family == AF_INET || family == AF_INET6 else { return address.description }
        return withUnsafePointer(to: &storage) { p -> String in
            var text = [CChar](repeating: 0, count: 64)
            let port: UInt16
            if family == AF_INET {
                let sin = UnsafeRawPointer(p).assumingMemoryBound(to: sockaddr_in.self)
                var a = sin.pointee.sin_addr
                inet_ntop(AF_INET, &a, &text, 64)
                port = UInt16(bigEndian: sin.pointee.sin_port)
                return "\(String(cString: text)):\(port)"
            }
            let sin6 = UnsafeRawPointer(p).assumingMemoryBound(to: sockaddr_in6.self)
            var a = sin6.pointee.sin6_addr
            inet_ntop(AF_INET6, &a, &text, 64)
            port = UInt16(bigEndian: sin6.pointee.sin6_port)
            return "[\(String(cString: text))]:\(port)"
        }
    }
}

extension Result {
    /// The success value, or `fallback` for a failure.
    func get(or fallback: Success) -> Success {
        if case .success(let v) = self { return v }
        return fallback
    }
}
