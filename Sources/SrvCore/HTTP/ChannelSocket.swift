import CSrvSystem
import NIOCore

/// The socket underneath a NIO channel, so that a complete response can be written with one
/// `send` instead of a trip through NIO's pipeline and write queue, and so that the idle
/// timer can see what the kernel still holds for a slow reader.
///
/// Why: per hello-world request, NIO's outbound path (write, then flush: pipeline
/// traversal, pending-writes bookkeeping, promise checks, a dozen lifecycle-state copies) is
/// about 3,300 of the worker's 13,900 user-space instructions. The same bytes through
/// `send(2)` cost a few dozen. NIO keeps everything else: accepting, reading, timers,
/// closing, and every write that cannot complete at once (see `HTTPConnection.flush`).
///
/// The descriptor comes from NIO's public `withUnsafeTransportIfAvailable` (socket channels
/// expose their handle). A channel that has none (an EmbeddedChannel in the unit tests)
/// gives nil, and its connection writes everything through NIO. A direct send must never
/// skip a channel handler: `WorkerServer.addConnectionHandlers` turns direct sends off for a
/// connection with an outbound handler in front of `HTTPConnection`.
enum ChannelSocket {
    /// The channel's socket descriptor; call on its event loop.
    static func descriptor(of channel: Channel) -> CInt? {
        guard let fd = try? channel.pipeline.syncOperations.withUnsafeTransportIfAvailable(
            of: NIOBSDSocket.Handle.self, { $0 }), fd >= 0 else { return nil }
        return fd
    }
}

/// How a connection sees its socket: the descriptor, and what the kernel still holds of
/// what was sent (a slow reader's bytes, which keep a connection busy and count for
/// --send-timeout). A worker asks the kernel; the unit tests pass a socket of their own
/// whose queue they fill and drain, so the send timeout is tested without a network.
struct SocketView {
    /// The channel's descriptor (on its event loop), or nil.
    var descriptor: (Channel) -> CInt?
    /// Bytes sent and not yet taken by the peer.
    var unsentBytes: (CInt) -> Int
    /// A number that changes whenever the peer takes bytes (srv_sys_send_progress).
    var sendProgress: (CInt) -> UInt64
    /// Bytes the peer sent that nobody has read yet.
    var unreadBytes: (CInt) -> Int

    static let kernel = SocketView(descriptor: ChannelSocket.descriptor(of:),
                                   unsentBytes: { Int(srv_sys_unsent_bytes($0)) },
                                   sendProgress: { srv_sys_send_progress($0) },
                                   unreadBytes: { Int(srv_sys_unread_bytes($0)) })
}
