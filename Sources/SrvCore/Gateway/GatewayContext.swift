import Glibc
import Logging
import NIOCore

/// What every request slot of a worker shares: settings that shape environ, the logger,
/// and strings that are the same for every request.
public final class GatewayContext {
    let logger: Logger
    let bodyMemoryLimit: Int
    let spoolDirectory: String
    /// The app runs on --threads pool threads: the callables are libffi closures.
    let threaded: Bool
    /// Another thread may call a thread-safe app at the same time (more than one pool
    /// thread): environ's multithread for apps with SRV_FLAG_THREAD_SAFE.
    let multithread: Bool
    let multiprocess: Bool
    let versionString = CString(GatewayABI.serverVersion)
    let workerPID: CString
    let generation: CString
    let dateCache: DateCache
    /// --send-timeout: how long a write may wait for the client to take a byte.
    let sendTimeout: Double
    /// The first part of every request id this worker hands out (RequestID).
    let requestIDPrefix = CString(RequestID.newPrefix())

    public init(logger: Logger, bodyMemoryLimit: Int, spoolDirectory: String, threads: Int,
                multiprocess: Bool, generation: Int, dateCache: DateCache, sendTimeout: Double) {
        self.sendTimeout = sendTimeout
        self.logger = logger
        self.bodyMemoryLimit = bodyMemoryLimit
        self.spoolDirectory = spoolDirectory
        self.threaded = threads > 0
        self.multithread = threads > 1
        self.multiprocess = multiprocess
        self.workerPID = CString(String(getpid()))
        self.generation = CString(String(generation))
        self.dateCache = dateCache
    }

    func log(_ level: Logger.Level, _ message: @autoclosure () -> String) {
        logger.log(level: level, "\(message())")
    }
}

/// The Date header, formatted once a second rather than per response. Without --threads
/// only the event loop touches it and it takes no lock; with --threads the pool threads
/// read it too, under a lock.
public final class DateCache {
    private let line = UnsafeMutablePointer<CChar>.allocate(capacity: 64)
    private var length = 0
    private var second = -1
    private let lock: NSLockish?

    public init(threadSafe: Bool) {
        lock = threadSafe ? NSLockish() : nil
        var now = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &now)
        refresh(now.tv_sec)
    }

    /// Appends "Date: ...\r\n".
    @inline(__always)
    func write(into out: inout OutBuffer) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &now)
        if let lock = lock {
            lock.run { append(now.tv_sec, into: &out) }
        } else {
            append(now.tv_sec, into: &out)
        }
    }

    @inline(__always)
    private func append(_ second: Int, into out: inout OutBuffer) {
        if second != self.second { refresh(second) }
        out.append(line, length)
    }

    private func refresh(_ second: Int) {
        var t = time_t(second)
        var tm = tm()
        gmtime_r(&t, &tm)
        length = strftime(line, 64, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm)
        self.second = second
    }
}
