import CSrvSystem
import Glibc

/// A worker's page of shared memory that the master reads: heartbeat, requests served and
/// the request in flight. Updating it costs a few stores and no system call, so a worker
/// can report every request; the master uses it for --timeout and `srv status`.
public final class Scoreboard {
    public static let size = 512
    static let lineCapacity = 256
    public let fd: Int32
    /// The mapped page. A plain pointer, so the worker updates it per request without
    /// reference counting.
    public let page: ScoreboardPage

    /// Creates a new page (master side).
    public init?(name: String) {
        fd = srv_sys_memfd(name, Scoreboard.size)
        guard fd >= 0, let p = mmap(nil, Scoreboard.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        page = ScoreboardPage(base: p)
    }

    /// Maps a page passed by the master (worker side).
    public init?(fd: Int32) {
        self.fd = fd
        guard let p = mmap(nil, Scoreboard.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        page = ScoreboardPage(base: p)
    }

    deinit {
        munmap(page.base, Scoreboard.size)
        close(fd)
    }

    // MARK: Master side

    public var lastHeartbeat: UInt64 { page.load(0) }
    public var requestsServed: UInt64 { page.load(8) }
    /// When the current request began (monotonic ns), or nil when idle.
    public var requestStarted: UInt64? { let v = page.load(16); return v == 0 ? nil : v }
    public var currentRequest: String {
        let n = min(Int((page.base + 24).load(as: UInt32.self)), Scoreboard.lineCapacity)
        return String(decoding: UnsafeRawBufferPointer(start: page.base + 32, count: n), as: UTF8.self)
    }
}

/// The worker's side of a scoreboard: valid while its `Scoreboard` lives.
public struct ScoreboardPage {
    let base: UnsafeMutableRawPointer

    fileprivate func store(_ offset: Int, _ value: UInt64) {
        (base + offset).assumingMemoryBound(to: UInt64.self).pointee = value
    }
    fileprivate func load(_ offset: Int) -> UInt64 {
        (base + offset).assumingMemoryBound(to: UInt64.self).pointee
    }

    public func heartbeat() { store(0, CoarseClock.now()) }

    @inline(__always)
    public func requestBegan(method: UnsafeRawBufferPointer, target: UnsafeRawBufferPointer) {
        var n = min(method.count, Scoreboard.lineCapacity - 1)
        if n > 0 { (base + 32).copyMemory(from: method.baseAddress!, byteCount: n) }
        (base + 32 + n).storeBytes(of: UInt8(ascii: " "), as: UInt8.self)
        n += 1
        let m = min(target.count, Scoreboard.lineCapacity - n)
        if m > 0 { (base + 32 + n).copyMemory(from: target.baseAddress!, byteCount: m) }
        n += m
        (base + 24).storeBytes(of: UInt32(n), as: UInt32.self)
        store(16, CoarseClock.now())
    }

    @inline(__always)
    public func requestEnded() {
        store(16, 0)
        store(8, load(8) &+ 1)
    }
}

/// Monotonic time in nanoseconds at the kernel tick's resolution (a few ms): read from
/// memory the kernel updates, with no clock read, for the per-request timestamps that
/// only timeouts of seconds look at.
enum CoarseClock {
    @inline(__always) static func now() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }
}
