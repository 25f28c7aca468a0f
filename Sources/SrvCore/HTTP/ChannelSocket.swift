import Glibc
import NIOCore

/// The socket underneath a NIO channel, so that a complete response can be written with one
/// `send` instead of a trip through NIO's pipeline and write queue.
///
/// Why: per hello-world request, NIO's outbound path (write, then flush: pipeline
/// traversal, pending-writes bookkeeping, promise checks, a dozen lifecycle-state copies) is
/// about 3,300 of the worker's 13,900 user-space instructions. The same bytes through
/// `send(2)` cost a few dozen. NIO keeps everything else: accepting, reading, timers,
/// closing, and every write that cannot complete at once (see `HTTPConnection.flush`).
///
/// NIO has no public accessor for a channel's descriptor, so this reads it from NIO's
/// socket object by reflection (`BaseSocketChannel.socket`, then `BaseSocket.descriptor`)
/// and then checks it against the channel's own addresses with getsockname/getpeername.
/// When either step fails (a NIO release renamed the fields), `descriptor` returns nil and
/// the connection simply writes through NIO; a unit test fails so that this is noticed.
/// Reflection costs about 15 µs, so a connection looks once, at its second request.
enum ChannelSocket {
    static func descriptor(of channel: Channel) -> CInt? {
        guard let socket = field("socket", of: channel), let fd = field("descriptor", of: socket) as? CInt,
              fd >= 0, matches(fd, channel) else { return nil }
        return fd
    }

    private static func field(_ name: String, of subject: Any) -> Any? {
        var mirror: Mirror? = Mirror(reflecting: subject)
        while let m = mirror {
            for child in m.children where child.label == name { return child.value }
            mirror = m.superclassMirror
        }
        return nil
    }

    /// The descriptor is a stream socket with the channel's local and remote addresses.
    private static func matches(_ fd: CInt, _ channel: Channel) -> Bool {
        var type: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0, type == CInt(SOCK_STREAM.rawValue),
              let local = address(fd, getsockname), local == channel.localAddress else { return false }
        switch channel.remoteAddress {
        case .v4?, .v6?: return address(fd, getpeername) == channel.remoteAddress
        case .unixDomainSocket?: return true  // an unnamed client: its local address is the proof
        case nil: return false
        }
    }

    private static func address(_ fd: CInt, _ get: (CInt, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt)
        -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { get(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        switch CInt(storage.ss_family) {
        case AF_INET:
            return withUnsafeBytes(of: &storage) { SocketAddress($0.load(as: sockaddr_in.self), host: "") }
        case AF_INET6:
            return withUnsafeBytes(of: &storage) { SocketAddress($0.load(as: sockaddr_in6.self), host: "") }
        case AF_UNIX:
            return withUnsafeBytes(of: &storage) { SocketAddress($0.load(as: sockaddr_un.self)) }
        default:
            return nil
        }
    }
}
