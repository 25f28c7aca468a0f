import Glibc
import Logging
import NIOCore

/// Sits on each listening channel and logs what NIO reports there: a connection that could
/// not be set up (a socket option refused, no file descriptor left) is closed by NIO before
/// srv's handler ever sees it, so without this nothing would say why clients were reset.
/// The same error is logged at most once per `interval`, with a count of the repeats.
final class AcceptErrorLogger: ChannelInboundHandler {
    typealias InboundIn = Channel

    private let logger: Logger
    private let interval: UInt64 = 5_000_000_000
    private var lastLogged: UInt64 = 0
    private var suppressed = 0

    init(logger: Logger) { self.logger = logger }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let now = CoarseClock.now()
        if lastLogged != 0 && now &- lastLogged < interval {
            suppressed += 1
            return
        }
        let repeats = suppressed > 0 ? " (\(suppressed) more like it since the last report)" : ""
        logger.warning("listener \(context.channel.localAddress.map { "\($0)" } ?? "?"): cannot set up a new connection, closing it: \(error)\(repeats)")
        lastLogged = now
        suppressed = 0
    }

    /// True for the errors that mean the peer went away (reset, broken pipe, timed out):
    /// those are the client's doing, not srv's.
    static func isPeerGone(_ error: Error) -> Bool {
        if let io = error as? IOError {
            return [ECONNRESET, EPIPE, ETIMEDOUT, ENOTCONN, ECONNABORTED].contains(io.errnoCode)
        }
        if error is ChannelError { return true }
        return false
    }
}
