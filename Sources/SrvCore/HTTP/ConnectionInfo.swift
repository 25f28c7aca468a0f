import NIOCore
import SrvGateway

/// Per-connection facts that end up in environ: computed once when the connection opens.
/// A class, so that handing it to each request is one reference, not four strings.
final class ConnectionInfo {
    var serverName: String
    var serverPort: String
    var remoteAddress: String
    var remotePort: String
    var scheme: String
    /// The peer may set X-Forwarded-For / X-Forwarded-Proto (--forwarded-allow-ips).
    var trustedProxy: Bool

    /// The environ strings: NUL-terminated copies in one allocation, made at the first
    /// request; a request in flight keeps its ConnectionInfo alive, so environ may point
    /// at them. A plain struct, so reading it costs no reference counting.
    struct CStrings {
        var serverName, serverPort, remoteAddress, remotePort: srv_str
        var isHTTPS: Bool
    }
    private var storage: UnsafeMutablePointer<CChar>?
    lazy var c: CStrings = makeCStrings()

    private func makeCStrings() -> CStrings {
        let parts = [serverName, serverPort, remoteAddress, remotePort]
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: parts.reduce(0) { $0 + $1.utf8.count + 1 })
        storage = p
        var offset = 0
        let strs = parts.map { part -> srv_str in
            let start = p + offset
            for byte in part.utf8 { p[offset] = CChar(bitPattern: byte); offset += 1 }
            p[offset] = 0
            offset += 1
            return srv_str(ptr: start, len: part.utf8.count)
        }
        return CStrings(serverName: strs[0], serverPort: strs[1], remoteAddress: strs[2], remotePort: strs[3],
                        isHTTPS: scheme == "https")
    }

    deinit { storage?.deallocate() }

    init(local: SocketAddress?, remote: SocketAddress?, forwardedAllow: AddressList) {
        // Without Host, SERVER_NAME is the listener's address; an IPv6 one in brackets, as
        // it would be written in a Host header. A Unix socket has none: localhost.
        serverName = local?.ipAddress.map { $0.contains(":") ? "[\($0)]" : $0 } ?? "localhost"
        serverPort = local?.port.map(String.init) ?? ""
        remoteAddress = remote?.ipAddress ?? ""
        remotePort = remote?.port.map(String.init) ?? ""
        scheme = "http"
        if case .unixDomainSocket = remote { trustedProxy = forwardedAllow.allowsUnix } else if remote == nil {
            trustedProxy = forwardedAllow.allowsUnix
        } else {
            trustedProxy = forwardedAllow.contains(remoteAddress)
        }
    }

    /// Applies X-Forwarded-For (its last address, the one the trusted proxy saw) and
    /// X-Forwarded-Proto from a trusted peer.
    private init(copying other: ConnectionInfo) {
        serverName = other.serverName
        serverPort = other.serverPort
        remoteAddress = other.remoteAddress
        remotePort = other.remotePort
        scheme = other.scheme
        trustedProxy = other.trustedProxy
    }

    func forwarded(for xff: String?, proto: String?) -> ConnectionInfo {
        let copy = ConnectionInfo(copying: self)
        if let xff = xff,
           let last = xff.split(separator: ",").last?.trimmingSpaces, !last.isEmpty {
            copy.remoteAddress = last
            copy.remotePort = ""
        }
        if let proto = proto?.trimmingSpaces.lowercased(), proto == "https" || proto == "http" {
            copy.scheme = proto
        }
        return copy
    }
}
