/// How many connections a worker accepts each time its listener is readable, and whether
/// it then pauses so that its siblings on the same socket get their turn.
///
/// - A listener of its own (`-w 1`, `--reuse-port`): everything queued, at once. Taking one
///   connection per wake-up starved the queue: with 10,000 clients the listener is one of
///   thousands of ready sockets, served once per pass over all of them, and 4,096 connections
///   waited in the queue for the whole of a 10 s run (`make bench`, section 4).
/// - A listener shared by `workers` siblings: one connection from a short queue (under 16
///   per worker), half of this worker's share of a longer one, then a short pause each
///   time. A burst is spread: each woken worker takes one and pauses (bursts of 20 on
///   `-w 2` split about 10/10; taking a share of what was queued split them 3/17). A long
///   queue drains in a few passes (10,000 clients on `-w 2`: within 1 s).
public struct AcceptPacing: Equatable {
    /// Workers accepting from the same socket; 1 when the socket is this worker's own.
    public let workers: Int
    /// The largest batch: the listen backlog, the most the queue can hold.
    public let backlog: Int

    public init(workers: Int, backlog: Int) {
        self.workers = max(workers, 1)
        self.backlog = max(backlog, 1)
    }

    public var shared: Bool { workers > 1 }

    /// The batch for the next wake-up, from the queue's length now (nil when the socket
    /// cannot tell, as a Unix socket cannot: then one at a time).
    public func batch(queued: Int?) -> Int {
        guard shared else { return backlog }
        guard let queued, queued >= 16 * workers else { return 1 }
        return min(backlog, queued / (2 * workers))
    }

    /// The pause after a batch: none for a socket of one's own.
    public var pauseMicroseconds: Int64 { shared ? 200 : 0 }
}
