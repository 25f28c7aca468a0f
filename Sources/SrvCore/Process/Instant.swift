import Glibc

/// A point of monotonic time (CLOCK_MONOTONIC, nanoseconds): every deadline of the master
/// is one, so that a step of the wall clock (NTP, an operator's `date -s`) neither fires
/// a timeout early nor postpones it. The scoreboards' coarse timestamps share its base.
public struct Instant: Comparable, Hashable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func now() -> Instant {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Instant(nanoseconds: UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec))
    }

    /// This instant moved by `seconds` (which may be negative; clamped at 0).
    public func adding(seconds: Double) -> Instant {
        let delta = Int64(seconds * 1e9)
        if delta < 0 { return Instant(nanoseconds: nanoseconds > UInt64(-delta) ? nanoseconds - UInt64(-delta) : 0) }
        return Instant(nanoseconds: nanoseconds &+ UInt64(delta))
    }

    /// Seconds from `earlier` to this instant (0 when `earlier` is later).
    public func seconds(since earlier: Instant) -> Double {
        nanoseconds > earlier.nanoseconds ? Double(nanoseconds - earlier.nanoseconds) / 1e9 : 0
    }

    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }

    public var description: String { String(fixed: Double(nanoseconds) / 1e9, decimals: 3) + " s" }
}
