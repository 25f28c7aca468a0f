import CSrvSystem
import Glibc
import Logging
import NIOCore

/// Sits on each listening channel, where NIO accepts:
/// - it logs what NIO reports there: a connection that could not be set up (a socket
///   option refused, no file descriptor left) is closed by NIO before srv's handler ever
///   sees it, so without this nothing would say why clients were reset. The same error is
///   logged at most once per `interval`, with a count of the repeats;
/// - out of descriptors it pauses accepting briefly instead of spinning;
/// - it accepts in the batches `AcceptPacing` decides: the whole queue from a socket of
///   its own; with siblings on the same socket, its share of the queue and then a pause, so
///   that new connections spread across the workers (200 connections on -w 2: 102/98; without
///   it one worker took most of a burst).
final class AcceptHandler: ChannelInboundHandler {
    typealias InboundIn = Channel

    private let logger: Logger
    private let interval: UInt64 = 5_000_000_000
    private var lastLogged: UInt64 = 0
    private var suppressed = 0

    private let pacing: AcceptPacing
    /// The listening socket, whose queue length sets a shared listener's next batch.
    private let listener: Int32
    private var accepted = false

    init(logger: Logger, pacing: AcceptPacing, listener: Int32) {
        self.logger = logger
        self.pacing = pacing
        self.listener = listener
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        accepted = true
        context.fireChannelRead(data)
    }

    /// After a batch, a shared listener sets the next one from what is still queued (the
    /// siblings take their shares of it too) and pauses.
    func channelReadComplete(context: ChannelHandlerContext) {
        guard pacing.shared, accepted else { return }
        accepted = false
        let queued = srv_sys_listen_queue_length(listener)
        let batch = pacing.batch(queued: queued < 0 ? nil : Int(queued))
        try? context.channel.syncOptions?.setOption(ChannelOptions.maxMessagesPerRead, value: UInt(batch))
        pauseAccepting(context: context, for: .microseconds(pacing.pauseMicroseconds))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let io = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(io.errnoCode) {
            pauseAccepting(context: context, for: Self.acceptPause)
        }
        let now = CoarseClock.now()
        if lastLogged != 0 && now &- lastLogged < interval {
            suppressed += 1
            return
        }
        let repeats = suppressed > 0 ? " (\(suppressed) more like it since the last report)" : ""
        logger.warning("listener \(context.channel.localAddress.map { "\($0)" } ?? "?"): cannot set up a new connection: \(Self.describe(error))\(Self.advice(error))\(repeats)")
        lastLogged = now
        suppressed = 0
    }

    /// Out of descriptors (or memory), the pending connection stays in the queue and the
    /// listener stays readable: accepting again at once would spin at 100% of a core. As
    /// nginx does, srv stops accepting for a moment; connections wait in the queue.
    private func pauseAccepting(context: ChannelHandlerContext, for pause: TimeAmount) {
        let channel = context.channel
        guard (try? channel.syncOptions?.getOption(ChannelOptions.autoRead)) ?? false else { return }
        try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        channel.eventLoop.scheduleTask(in: pause) {
            try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
            channel.read()
        }
    }
    static let acceptPause = TimeAmount.milliseconds(250)

    /// A system error as `strerror` says it, with its number ("Too many open files (errno
    /// 24)"); NIO's own description of an IOError reads "...) (errno: 24)".
    static func describe(_ error: Error) -> String {
        guard let io = error as? IOError else { return "\(error)" }
        return "\(String(cString: strerror(io.errnoCode))) (errno \(io.errnoCode))"
    }

    private static func advice(_ error: Error) -> String {
        guard let io = error as? IOError, [EMFILE, ENFILE].contains(io.errnoCode) else { return "" }
        return "; out of file descriptors: accepting pauses for 250 ms and connections wait in the listen queue (raise the limit: LimitNOFILE= in the unit, or ulimit -n)"
    }
}
