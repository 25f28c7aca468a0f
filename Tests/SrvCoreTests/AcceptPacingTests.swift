import XCTest
@testable import SrvCore

final class AcceptPacingTests: XCTestCase {
    func testASocketOfItsOwnTakesTheWholeQueueWithoutPausing() {
        let own = AcceptPacing(workers: 1, backlog: 4096)
        XCTAssertFalse(own.shared)
        XCTAssertEqual(own.batch(queued: nil), 4096)
        XCTAssertEqual(own.batch(queued: 3), 4096)
        XCTAssertEqual(own.pauseMicroseconds, 0)
    }

    func testASharedSocketTakesOneAtATimeFromAShortOrUnknownQueue() {
        let shared = AcceptPacing(workers: 2, backlog: 4096)
        XCTAssertTrue(shared.shared)
        XCTAssertEqual(shared.batch(queued: nil), 1, "a Unix socket cannot tell its queue's length")
        XCTAssertEqual(shared.batch(queued: 0), 1)
        XCTAssertEqual(shared.batch(queued: 1), 1)
        XCTAssertEqual(shared.batch(queued: 2), 1)
        XCTAssertEqual(shared.batch(queued: 20), 1, "a burst of 20 is taken one at a time")
        XCTAssertEqual(shared.batch(queued: 31), 1)
        XCTAssertEqual(shared.pauseMicroseconds, 200)
    }

    func testASharedSocketTakesHalfItsShareOfALongQueue() {
        XCTAssertEqual(AcceptPacing(workers: 2, backlog: 4096).batch(queued: 4000), 1000)
        XCTAssertEqual(AcceptPacing(workers: 2, backlog: 4096).batch(queued: 32), 8)
        XCTAssertEqual(AcceptPacing(workers: 3, backlog: 4096).batch(queued: 47), 1)
        XCTAssertEqual(AcceptPacing(workers: 3, backlog: 4096).batch(queued: 100), 16)
        XCTAssertEqual(AcceptPacing(workers: 2, backlog: 100).batch(queued: 4000), 100, "never more than the backlog")
    }

    func testNonsenseCountsAreClamped() {
        XCTAssertEqual(AcceptPacing(workers: 0, backlog: 0), AcceptPacing(workers: 1, backlog: 1))
        XCTAssertEqual(AcceptPacing(workers: 0, backlog: 0).batch(queued: 5), 1)
    }
}
