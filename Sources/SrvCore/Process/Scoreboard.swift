import CSrvSystem
import Glibc

/// A worker's shared memory that the master reads: heartbeat, requests served and the
/// requests in flight, one entry per thread that runs the application (one in inline
/// mode, `--threads` of them otherwise), so that `--timeout` sees every request, not only
/// the last one to start. Updating it costs a few stores and no system call, so a worker
/// can report every request; the master uses it for --timeout and `srv status`.
///
/// Layout: heartbeat at 0, requests served at 8, the entry count at 16, open connections
/// at 24, entries from 64, each `entryStride` bytes: the start (monotonic ns, 0 when idle)
/// at 0, the line's length at 8, the application slot at 12, the line ("GET /path") from
/// 16, the request id's length at `idOffset` and the id after it; then the request counters
/// of `RequestMetrics`.
public final class Scoreboard {
    static let lineCapacity = 256
    /// srv.request_id: srv's own is 33 characters at most (12 hex digits, `-`, a counter),
    /// an adopted X-Request-Id 128.
    static let idCapacity = 128
    static let idOffset = 16 + lineCapacity
    static let entriesOffset = 64
    static let entryStride = idOffset + 8 + idCapacity
    static let connectionsOffset = 24
    static func metricsOffset(entries: Int) -> Int { entriesOffset + entries * entryStride }
    public let fd: Int32
    public let entries: Int
    let size: Int
    /// The mapped memory. A plain pointer, so the worker updates it per request without
    /// reference counting.
    public let page: ScoreboardPage

    /// One request entry for the event loop, and one per --threads pool thread.
    public static func entries(threads: Int) -> Int { 1 + max(threads, 0) }

    static func size(entries: Int) -> Int {
        let bytes = metricsOffset(entries: entries) + RequestMetrics.bytes
        return (bytes + 4095) / 4096 * 4096
    }

    /// Creates a new scoreboard with `entries` request entries (master side).
    public init?(name: String, entries: Int) {
        let n = max(1, entries)
        size = Self.size(entries: n)
        fd = srv_sys_memfd(name, size)
        guard fd >= 0, let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        self.entries = n
        (p + 16).storeBytes(of: UInt32(n), as: UInt32.self)
        page = ScoreboardPage(base: p, entries: n)
    }

    /// Maps a scoreboard passed by the master (worker side).
    public init?(fd: Int32) {
        self.fd = fd
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= Self.size(entries: 1) else { return nil }
        size = Int(st.st_size)
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        let n = Int((p + 16).load(as: UInt32.self))
        entries = max(1, min(n, (size - Self.entriesOffset) / Self.entryStride))
        page = ScoreboardPage(base: p, entries: entries)
    }

    deinit {
        munmap(page.base, size)
        close(fd)
    }

    // MARK: Master side

    public var lastHeartbeat: UInt64 { page.load(0) }
    public var requestsServed: UInt64 { page.load(8) }

    /// A request in flight: when it began (monotonic ns), its line and its application
    /// slot (RequestMetrics).
    public struct Request: Equatable {
        public var started: UInt64
        public var line: String
        public var slot: Int = 0
        /// Its srv.request_id, which every log line about it names.
        public var id: String = ""

        /// How a log line names it: `"GET /path" (request ID)`.
        public var described: String { id.isEmpty ? "\"\(line)\"" : "\"\(line)\" (request \(id))" }
    }

    /// Every request in flight, oldest first.
    public var requestsInFlight: [Request] {
        (0..<entries).compactMap { i -> Request? in
            let entry = page.base + Self.entriesOffset + i * Self.entryStride
            let started = entry.load(as: UInt64.self)
            guard started != 0 else { return nil }
            let n = min(Int((entry + 8).load(as: UInt32.self)), Self.lineCapacity)
            let idLength = min(Int((entry + Self.idOffset).load(as: UInt32.self)), Self.idCapacity)
            return Request(started: started, line: String(decoding: UnsafeRawBufferPointer(start: entry + 16, count: n), as: UTF8.self),
                           slot: Int((entry + 12).load(as: UInt32.self)),
                           id: String(decoding: UnsafeRawBufferPointer(start: entry + Self.idOffset + 8, count: idLength), as: UTF8.self))
        }.sorted { $0.started < $1.started }
    }
}

/// The worker's side of a scoreboard: valid while its `Scoreboard` lives.
public struct ScoreboardPage {
    let base: UnsafeMutableRawPointer
    let entries: Int

    fileprivate func store(_ offset: Int, _ value: UInt64) {
        (base + offset).assumingMemoryBound(to: UInt64.self).pointee = value
    }
    fileprivate func load(_ offset: Int) -> UInt64 {
        (base + offset).assumingMemoryBound(to: UInt64.self).pointee
    }

    public func heartbeat() { store(0, CoarseClock.now()) }

    /// The entry of the calling thread: 0 on the event loop (inline mode, and apps
    /// without SRV_FLAG_THREAD_SAFE under --threads), the pool thread's own after it.
    @inline(__always)
    public func entry(threaded: Bool) -> Int {
        threaded && entries > 1 ? 1 + Int(srv_sys_thread_index()) % (entries - 1) : 0
    }

    @inline(__always)
    public func requestBegan(entry: Int, slot: Int, method: UnsafeRawBufferPointer, target: UnsafeRawBufferPointer,
                             id: UnsafeRawBufferPointer) {
        let e = base + Scoreboard.entriesOffset + entry * Scoreboard.entryStride
        var n = min(method.count, Scoreboard.lineCapacity - 1)
        if n > 0 { (e + 16).copyMemory(from: method.baseAddress!, byteCount: n) }
        (e + 16 + n).storeBytes(of: UInt8(ascii: " "), as: UInt8.self)
        n += 1
        let m = min(target.count, Scoreboard.lineCapacity - n)
        if m > 0 { (e + 16 + n).copyMemory(from: target.baseAddress!, byteCount: m) }
        n += m
        (e + 8).storeBytes(of: UInt32(n), as: UInt32.self)
        (e + 12).storeBytes(of: UInt32(truncatingIfNeeded: slot), as: UInt32.self)
        let idLength = min(id.count, Scoreboard.idCapacity)
        if idLength > 0 { (e + Scoreboard.idOffset + 8).copyMemory(from: id.baseAddress!, byteCount: idLength) }
        (e + Scoreboard.idOffset).storeBytes(of: UInt32(idLength), as: UInt32.self)
        e.storeBytes(of: CoarseClock.now(), as: UInt64.self)
    }

    @inline(__always)
    public func requestEnded(entry: Int) {
        (base + Scoreboard.entriesOffset + entry * Scoreboard.entryStride).storeBytes(of: UInt64(0), as: UInt64.self)
        srv_sys_atomic_add_u64((base + 8).assumingMemoryBound(to: UInt64.self), 1)
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
