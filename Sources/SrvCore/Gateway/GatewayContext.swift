import Glibc
import Logging
import NIOCore

/// What every request slot of a worker shares: settings that shape environ, the logger,
/// and strings that are the same for every request.
public final class GatewayContext {
    let logger: Logger
    let bodyMemoryLimit: Int
    let spoolDirectory: String
    let multithread: Bool
    let multiprocess: Bool
    let versionString = CString(GatewayABI.serverVersion)
    let workerPID: CString
    let generation: CString
    let dateCache: DateCache

    public init(logger: Logger, bodyMemoryLimit: Int, spoolDirectory: String, multithread: Bool,
                multiprocess: Bool, generation: Int, dateCache: DateCache) {
        self.logger = logger
        self.bodyMemoryLimit = bodyMemoryLimit
        self.spoolDirectory = spoolDirectory
        self.multithread = multithread
        self.multiprocess = multiprocess
        self.workerPID = CString(String(getpid()))
        self.generation = CString(String(generation))
        self.dateCache = dateCache
    }

    func log(_ level: Logger.Level, _ message: @autoclosure () -> String) {
        logger.log(level: level, "\(message())")
    }
}

/// The Date header, formatted once a second rather than per response.
public final class DateCache {
    private var line: ByteBuffer
    private var second: Int = -1
    private let lock = NSLockish()

    public init() {
        line = ByteBufferAllocator().buffer(capacity: 40)
        refresh()
    }

    /// Appends "Date: ...\r\n".
    @inline(__always)
    func write(into out: inout OutBuffer) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &now)
        if now.tv_sec != second { refresh() }
        lock.run { line.withUnsafeReadableBytes { out.append($0) } }
    }

    private func refresh() {
        var now = time(nil)
        var tm = tm()
        gmtime_r(&now, &tm)
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, 64, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm)
        var fresh = ByteBufferAllocator().buffer(capacity: n)
        _ = buffer.withUnsafeBytes { fresh.writeBytes(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        lock.run {
            line = fresh
            second = now
        }
    }

}
