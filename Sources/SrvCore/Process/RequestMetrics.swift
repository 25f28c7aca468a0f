import Glibc

/// The request counters a worker keeps in its scoreboard for `--metrics-bind`, and the
/// master's sums of them. A worker only adds (on its event loop, where every response
/// ends); the master reads each live worker's page at a scrape and, when a worker exits,
/// folds its last numbers into the totals of the exited ones, so no total ever goes down
/// (Prometheus counters), whatever happens to the processes.
///
/// Per application slot (0: srv's own answers, such as a 400 for a malformed request or a
/// 404 where nothing is mounted; 1 + n: the worker's n-th application), as UInt64s:
/// requests by method and status class, response body bytes, the request-duration
/// histogram's buckets (not cumulative) and the sum of durations in nanoseconds.
public enum RequestMetrics {
    public static let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"]
    public static let statusClasses = ["1xx", "2xx", "3xx", "4xx", "5xx"]
    /// Upper bounds in seconds (Prometheus' default buckets); +Inf follows.
    public static let buckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    static let bucketNanos: [UInt64] = buckets.map { UInt64($0 * 1e9) }

    static let requestsOffset = 0
    static let bytesOffset = methods.count * statusClasses.count
    static let bucketsOffset = bytesOffset + 1
    static let sumOffset = bucketsOffset + buckets.count + 1
    /// UInt64s per application slot.
    static let slotWords = sumOffset + 1
    /// Application slots a scoreboard has room for (srv's own and 63 applications); the
    /// applications past it count in srv's slot.
    public static let slots = 64
    static let bytes = slots * slotWords * 8

    /// The index in `methods` of every other method, and of a request whose head never
    /// completed (the HTTP side maps its parser's methods: RequestHead.metricsMethod).
    public static let otherMethod = methods.count - 1

    /// What one application slot counted (of one worker, or summed).
    public struct Counters: Equatable {
        public var words = [UInt64](repeating: 0, count: RequestMetrics.slotWords)

        public init() {}

        public func requests(method: Int, statusClass: Int) -> UInt64 {
            words[requestsOffset + method * statusClasses.count + statusClass]
        }
        public var requests: UInt64 { words[requestsOffset..<bytesOffset].reduce(0, +) }
        public var responseBytes: UInt64 { words[bytesOffset] }
        /// Non-cumulative counts per bucket, +Inf last.
        public var bucketCounts: ArraySlice<UInt64> { words[bucketsOffset..<sumOffset] }
        public var durationSeconds: Double { Double(words[sumOffset]) / 1e9 }

        public static func += (a: inout Counters, b: Counters) {
            for i in 0..<a.words.count { a.words[i] &+= b.words[i] }
        }
    }
}

extension ScoreboardPage {
    @inline(__always)
    private var metricsBase: UnsafeMutablePointer<UInt64> {
        (base + Scoreboard.metricsOffset(entries: entries)).assumingMemoryBound(to: UInt64.self)
    }

    /// Counts a response (event-loop thread only: plain stores, no lock).
    /// - Parameter method: the method's index in `RequestMetrics.methods`.
    @inline(__always)
    public func recordRequest(slot: Int, method: Int, status: Int, bytes: Int, nanoseconds: UInt64) {
        let s = metricsBase + min(slot, RequestMetrics.slots - 1) * RequestMetrics.slotWords
        let statusClass = min(max(status / 100, 1), 5) - 1
        s[RequestMetrics.requestsOffset + method * RequestMetrics.statusClasses.count + statusClass] &+= 1
        s[RequestMetrics.bytesOffset] &+= UInt64(max(bytes, 0))
        var bucket = 0
        while bucket < RequestMetrics.bucketNanos.count, nanoseconds > RequestMetrics.bucketNanos[bucket] { bucket += 1 }
        s[RequestMetrics.bucketsOffset + bucket] &+= 1
        s[RequestMetrics.sumOffset] &+= nanoseconds
    }

    /// Open connections (event-loop thread only).
    public func connectionsChanged(by delta: Int) {
        let p = (base + Scoreboard.connectionsOffset).assumingMemoryBound(to: UInt64.self)
        p.pointee = UInt64(bitPattern: Int64(bitPattern: p.pointee) + Int64(delta))
    }

    /// What the worker counted for each application slot (master side).
    func requestCounters() -> [RequestMetrics.Counters] {
        (0..<RequestMetrics.slots).map { slot in
            var c = RequestMetrics.Counters()
            let s = metricsBase + slot * RequestMetrics.slotWords
            for i in 0..<RequestMetrics.slotWords { c.words[i] = s[i] }
            return c
        }
    }

    var connectionsOpen: Int { Int(Int64(bitPattern: (base + Scoreboard.connectionsOffset).load(as: UInt64.self))) }
}
