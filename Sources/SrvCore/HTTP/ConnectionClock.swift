import NIOCore

/// Where the request path reads monotonic time (nanoseconds) for its idle, body and send
/// timeouts. A worker reads CLOCK_MONOTONIC_COARSE (a few ns, no syscall); the unit tests
/// read their EmbeddedEventLoop's clock, which moves only with `advanceTime`, so that
/// keep-alive expiry and the other timeouts are tested without sleeping.
struct ConnectionClock {
    private let read: (() -> UInt64)?

    /// The worker's clock.
    static let coarse = ConnectionClock(read: nil)

    /// Time as `loop` counts it (its timers fire by the same count).
    static func of(_ loop: EventLoop) -> ConnectionClock {
        ConnectionClock { loop.now.uptimeNanoseconds }
    }

    private init(read: (() -> UInt64)?) { self.read = read }

    @inline(__always)
    func now() -> UInt64 {
        if let read = read { return read() }
        return CoarseClock.now()
    }
}
