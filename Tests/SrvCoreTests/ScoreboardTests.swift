import XCTest
@testable import SrvCore

/// The worker's shared page as the master reads it: each request in flight with its line
/// and its srv.request_id, so that a crash or a --timeout line can name the request.
final class ScoreboardTests: XCTestCase {
    private func bytes(_ s: String, _ body: (UnsafeRawBufferPointer) -> Void) {
        var s = s
        s.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }

    func testARequestInFlightCarriesItsLineAndId() throws {
        let board = try XCTUnwrap(Scoreboard(name: "test", entries: 2))
        bytes("GET") { m in bytes("/crash") { t in bytes("3f9c0a41d27e-42") { id in
            board.page.requestBegan(entry: 1, slot: 3, method: m, target: t, id: id)
        } } }
        let r = try XCTUnwrap(board.requestsInFlight.first)
        XCTAssertEqual(r.line, "GET /crash")
        XCTAssertEqual(r.id, "3f9c0a41d27e-42")
        XCTAssertEqual(r.slot, 3)
        XCTAssertEqual(r.described, "\"GET /crash\" (request 3f9c0a41d27e-42)")
        board.page.requestEnded(entry: 1)
        XCTAssertTrue(board.requestsInFlight.isEmpty)
        XCTAssertEqual(board.requestsServed, 1)
    }

    func testAnAdoptedIdLongerThanTheEntryIsCut() throws {
        let board = try XCTUnwrap(Scoreboard(name: "test", entries: 1))
        let long = String(repeating: "a", count: 200)
        bytes("GET") { m in bytes("/") { t in bytes(long) { id in
            board.page.requestBegan(entry: 0, slot: 0, method: m, target: t, id: id)
        } } }
        XCTAssertEqual(board.requestsInFlight.first?.id.count, Scoreboard.idCapacity)
    }
}
