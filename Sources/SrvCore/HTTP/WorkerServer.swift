import CSrvSystem
import Glibc
import Logging
import NIOCore
import NIOPosix

/// The HTTP side of a worker process: one event loop serving the listeners the master
/// passed, the loaded applications, and the pool of request slots.
public final class WorkerServer {
    public let settings: Settings
    /// The request limits as plain integers: the request path reads them without copying
    /// `settings` (whose strings and arrays would be retained and released each time).
    struct Limits { var line, fields, fieldSize, body: Int }
    let limits: Limits
    let router: Router
    let logger: Logger
    /// Kept alive here; the request path writes through `scoreboardPage`.
    private let scoreboard: Scoreboard?
    let scoreboardPage: ScoreboardPage?
    /// The scoreboard when --metrics-bind is set: responses and connections are counted.
    let metricsPage: ScoreboardPage?
    let accessLog: AccessLog?
    let dateCache: DateCache
    let gateway: GatewayContext
    let threadPool: NIOThreadPool?
    /// --keep-alive is not 0: a connection may serve more than one request.
    let keepsAlive: Bool
    /// The idle, body and send timeouts' clock.
    let clock: ConnectionClock
    /// How connections see their sockets (the kernel's, or a unit test's).
    let socketView: SocketView
    public let group: EventLoopGroup
    private var serverChannels: [Channel] = []
    private var listenerFDs: [Int32] = []
    private var freeSlots: [RequestSlot] = []
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    private var requestCounter: UInt64 = 0
    private var completed = 0
    private let retireAfter: Int
    private var retirementRequested = false
    public private(set) var isShuttingDown = false
    /// Called (on the event loop) once --max-requests is reached.
    public var onRetire: (() -> Void)?
    private let drained: EventLoopPromise<Void>
    private var isDrained = false

    /// - Parameters:
    ///   - eventLoopGroup: where connections are served; nil: a new one-thread group (a
    ///     worker process). The unit tests pass an EmbeddedEventLoop, with `clock` its clock
    ///     and a `socketView` whose send queue they control.
    public convenience init(settings: Settings, apps: [MountedApp], logger: Logger, scoreboard: Scoreboard?,
                            accessLog: AccessLog?, generation: Int, multiprocess: Bool) {
        self.init(settings: settings, apps: apps, logger: logger, scoreboard: scoreboard, accessLog: accessLog,
                  generation: generation, multiprocess: multiprocess, eventLoopGroup: nil, clock: .coarse,
                  socketView: .kernel)
    }

    init(settings: Settings, apps: [MountedApp], logger: Logger, scoreboard: Scoreboard?,
         accessLog: AccessLog?, generation: Int, multiprocess: Bool, eventLoopGroup: EventLoopGroup?,
         clock: ConnectionClock, socketView: SocketView = .kernel) {
        self.settings = settings
        self.limits = Limits(line: settings.limitRequestLine, fields: settings.limitRequestFields,
                             fieldSize: settings.limitRequestFieldSize, body: settings.limitRequestBody)
        self.router = Router(apps: apps)
        self.logger = logger
        self.scoreboard = scoreboard
        self.scoreboardPage = scoreboard?.page
        self.metricsPage = settings.metricsBind != nil ? scoreboard?.page : nil
        self.accessLog = accessLog
        self.group = eventLoopGroup ?? MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.clock = clock
        self.socketView = socketView
        self.keepsAlive = settings.keepAlive > 0
        self.dateCache = DateCache(threadSafe: settings.threads > 0)
        self.drained = group.next().makePromise(of: Void.self)
        if settings.threads > 0 {
            let pool = NIOThreadPool(numberOfThreads: settings.threads)
            pool.start()
            threadPool = pool
        } else {
            threadPool = nil
        }
        gateway = GatewayContext(logger: logger, bodyMemoryLimit: settings.bodyMemoryLimit,
                                 spoolDirectory: settings.spoolDirectory, threads: settings.threads,
                                 multiprocess: multiprocess, generation: generation, dateCache: dateCache,
                                 sendTimeout: settings.sendTimeout)
        let jitter = settings.maxRequestsJitter > 0 ? Int.random(in: 0...settings.maxRequestsJitter) : 0
        retireAfter = settings.maxRequests > 0 ? settings.maxRequests + jitter : 0
    }

    /// Starts serving on already-listening sockets (fds inherited from the master).
    public func serve(listenerFDs: [Int32]) throws {
        // Workers sharing one socket (no --reuse-port) pace their accepts.
        let pacing = AcceptPacing(workers: settings.effectiveReusePort ? 1 : settings.workers,
                                  backlog: settings.backlog)
        for fd in listenerFDs {
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            AcceptHandler(logger: self.logger, pacing: pacing, listener: fd))
                    }
                }
                .serverChannelOption(ChannelOptions.maxMessagesPerRead, value: UInt(pacing.batch(queued: nil)))
                .childChannelInitializer { channel in self.initializeConnection(channel) }
            let channel = try bootstrap.withBoundSocket(fd).wait()
            // NIO's server channel calls listen(fd, 128) when it adopts the socket, before
            // any option applies (the backlog option only reaches later listens). listen on
            // a listening socket sets its queue length again: --backlog is the length.
            Glibc.listen(fd, Int32(settings.backlog))
            serverChannels.append(channel)
            self.listenerFDs.append(fd)
        }
        // The heartbeat shows the master that the event loop is not stuck.
        scoreboardPage?.heartbeat()
        group.next().scheduleRepeatedTask(initialDelay: .milliseconds(500), delay: .milliseconds(500)) { _ in
            self.scoreboardPage?.heartbeat()
        }
    }

    /// The options and pipeline of a client connection, accepted by NIO or by srv.
    private func initializeConnection(_ channel: Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            if let options = channel.syncOptions {
                // TCP_NODELAY is an IPPROTO_TCP option: at SOL_SOCKET level its number (1)
                // is SO_DEBUG, which needs CAP_NET_ADMIN and fails for every ordinary user.
                // A Unix socket has no such option.
                switch channel.localAddress {
                case .unixDomainSocket?: break
                case nil: _ = try? options.setOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                default: try options.setOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                }
                try options.setOption(ChannelOptions.maxMessagesPerRead, value: 16)
                // A client may send its requests and then shut down its side (HTTP/1.0
                // tools, `nc -N`): it still gets every answer (see HTTPConnection).
                try options.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            }
            let front: [ChannelHandler] = self.settings.proxyProtocol
                ? [ProxyProtocolDecoder(allowed: self.settings.proxyAllowFrom, logger: self.logger)] : []
            try self.addConnectionHandlers(front, to: channel)
        }
    }

    /// Adds a client connection's handlers: `front` (the PROXY protocol decoder; TLS or
    /// compression, should srv ever add them), then the HTTPConnection. A handler in front
    /// that sees outbound data turns the connection's direct sends off: bytes sent straight
    /// to the socket would skip it. Nothing may be added in front of HTTPConnection later.
    func addConnectionHandlers(_ front: [ChannelHandler], to channel: Channel) throws {
        let sync = channel.pipeline.syncOperations
        for handler in front { try sync.addHandler(handler) }
        let directWrites = !front.contains { $0 is any ChannelOutboundHandler }
        try sync.addHandler(HTTPConnection(worker: self, channel: channel, directWrites: directWrites))
    }

    /// Accepts every connection waiting in the listen queues and serves each (with
    /// Connection: close): on a graceful stop they were accepted by the kernel on srv's
    /// behalf, and closing the listener would reset them.
    private func acceptQueuedConnections() {
        for fd in listenerFDs {
            while true {
                let client = srv_sys_accept_nonblocking(fd)
                if client < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    break  // EAGAIN: the queue is empty (or out of descriptors)
                }
                ClientBootstrap(group: group)
                    .channelInitializer { channel in self.initializeConnection(channel) }
                    .withConnectedSocket(client)
                    .whenFailure { error in
                        self.log(.warning, "cannot serve a connection accepted while stopping: \(error)")
                    }
            }
        }
    }

    /// Blocks until the server has stopped.
    public func waitUntilStopped() {
        try? drained.futureResult.wait()
    }

    // MARK: - Slots and connections (event loop only)

    func acquireSlot() -> RequestSlot {
        if let slot = freeSlots.popLast() { return slot }
        return RequestSlot(context: gateway)
    }

    func releaseSlot(_ slot: RequestSlot) {
        slot.release()
        freeSlots.append(slot)
    }

    func nextRequestID() -> UInt64 {
        requestCounter &+= 1
        return requestCounter
    }

    func requestCompleted() {
        completed += 1
        if retireAfter > 0 && completed >= retireAfter && !retirementRequested {
            retirementRequested = true
            log(.info, "served \(completed) requests (--max-requests \(settings.maxRequests)); asking the master for a replacement")
            onRetire?()
        }
    }

    func connectionOpened(_ c: HTTPConnection) {
        connections[ObjectIdentifier(c)] = c
        metricsPage?.connectionsChanged(by: 1)
    }

    func connectionClosed(_ c: HTTPConnection) {
        connections[ObjectIdentifier(c)] = nil
        metricsPage?.connectionsChanged(by: -1)
        if isShuttingDown && connections.isEmpty { finishDraining() }
    }

    /// How long a connection may wait for its next request: --keep-alive. Without
    /// keep-alive (--keep-alive 0) a connection serves one request, which may take as long
    /// to arrive as a body may pause (--body-timeout, as nginx's client_header_timeout), or
    /// 1 s once the worker stops.
    var idleLimit: TimeAmount {
        let seconds = keepsAlive ? settings.keepAlive
            : isShuttingDown ? min(settings.bodyTimeout, 1) : settings.bodyTimeout
        return .nanoseconds(Int64(seconds * 1e9))
    }

    func log(_ level: Logger.Level, _ message: String) {
        logger.log(level: level, "\(message)")
    }

    // MARK: - Stopping

    /// Stops accepting, lets in-flight requests finish, closes idle keep-alive connections;
    /// completes once every connection is closed or after `timeout` seconds.
    public func shutdownGracefully(timeout: Double) {
        group.next().execute {
            guard !self.isShuttingDown else { return }
            self.isShuttingDown = true
            self.acceptQueuedConnections()
            for ch in self.serverChannels { ch.close(promise: nil) }
            for c in self.connections.values { c.shutdownGracefully() }
            if self.connections.isEmpty { self.finishDraining() }
            self.group.next().scheduleTask(in: .nanoseconds(Int64(timeout * 1e9))) {
                if !self.connections.isEmpty {
                    self.log(.warning, "graceful timeout (\(timeout) s) reached with \(self.connections.count) connection(s) open; closing them")
                }
                self.finishDraining()
            }
        }
    }

    private func finishDraining() {
        if isDrained { return }
        isDrained = true
        drained.succeed(())
    }

}
