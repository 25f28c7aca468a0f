import SrvGateway
import XCTest
@testable import SrvCore

/// Where public HTTP/1.1 suites (h1spec, the HTTP Garden, llhttp's vectors) found srv
/// disagreeing with RFC 9112 or with Gunicorn's limits: each test is one such request.
final class HTTPEdgeTests: XCTestCase {
    override func setUp() { TestApp.reset() }

    /// The status of `request` sent in one write, and sent in two at every byte boundary.
    private func statuses(_ request: String, configure: (inout Settings) -> Void = { _ in }) throws -> Set<Int> {
        let bytes = Array(request.utf8)
        var seen = Set<Int>()
        for split in 0..<bytes.count {
            TestApp.reset()
            let c = try connection(configure)
            if split > 0 { c.send(Array(bytes[..<split])) }
            if c.isOpen { c.send(Array(bytes[split...])) }
            seen.insert(c.responses().first?.status ?? -1)
        }
        return seen
    }

    // MARK: - A head's answer does not depend on how it was split into reads

    func testTrailingTabsOfAFieldValueAreWhitespaceWhereverTheReadEnds() throws {
        TestApp.handler = { $0.respond(body: String(decoding: $0.readBody(), as: UTF8.self)) }
        let request = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\t2\t  \r\n\r\nok"
        XCTAssertEqual(try statuses(request), [200])
    }

    func testATabInsideAValueIsStillRefusedWhereverTheReadEnds() throws {
        XCTAssertEqual(try statuses("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\t2\r\n\r\nok"), [400])
    }

    // MARK: - Chunk lines (RFC 9112 7.1.1: BWS only around `;` and `=`)

    func testWhitespaceAfterAChunkSizeWithoutAnExtensionGets400() throws {
        for line in ["a ", "A           ", "a\t"] {
            let c = try connection()
            c.send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\(line)\r\n0123456789\r\n0\r\n\r\n")
            XCTAssertEqual(c.responses().first?.status, 400, "chunk line \"\(line)\"")
            XCTAssertEqual(TestApp.calls, 0)
        }
    }

    func testWhitespaceBeforeAChunkExtensionIsAccepted() throws {
        TestApp.handler = { $0.respond(body: String(decoding: $0.readBody(), as: UTF8.self)) }
        let c = try connection()
        c.send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\na ; x = y\r\n0123456789\r\n0\r\n\r\n")
        XCTAssertEqual(c.responses().first?.body, "0123456789")
    }

    // MARK: - Request targets (RFC 9112 3.2)

    func testAFragmentInTheRequestTargetGets400() throws {
        for target in ["/#frag", "/a?b#c", "http://h/#x"] {
            let c = try connection()
            c.send("GET \(target) HTTP/1.1\r\nHost: h\r\n\r\n")
            XCTAssertEqual(c.responses().first?.status, 400, target)
            XCTAssertEqual(TestApp.calls, 0)
        }
    }

    func testAnInvalidIPv6LiteralGets400InTheTargetAndInHost() throws {
        for bad in ["[4712::abcd::]", "[::1::2]", "[12345::]", "[1:2:3:4:5:6:7:8:9]", "[g::1]", "[]"] {
            let c = try connection()
            c.send("GET http://\(bad)/ HTTP/1.1\r\nHost: h\r\n\r\n")
            XCTAssertEqual(c.responses().first?.status, 400, "target authority \(bad)")
            let d = try connection()
            d.send("GET / HTTP/1.1\r\nHost: \(bad):80\r\n\r\n")
            XCTAssertEqual(d.responses().first?.status, 400, "Host \(bad)")
        }
        XCTAssertEqual(TestApp.calls, 0)
    }

    func testValidIPLiteralsAreAccepted() throws {
        for good in ["[::1]", "[4712::abcd]", "[::ffff:192.0.2.1]", "[1:2:3:4:5:6:7:8]", "[v1.fe80::a+en1]"] {
            let c = try connection()
            c.send("GET http://\(good):8080/ HTTP/1.1\r\nHost: \(good)\r\n\r\n")
            XCTAssertEqual(c.responses().first?.status, 200, good)
        }
    }

    // MARK: - Request lines (RFC 9112 3)

    func testAMalformedRequestLineGets400NotMethodNotImplemented() throws {
        for line in ["G ET / HTTP/1.0", "BREW / / HTTP/1.1", "BREW /"] {
            XCTAssertEqual(try statuses("\(line)\r\nHost: h\r\n\r\n"), [400], line)
        }
    }

    func testAWellFormedLineWithAnUnknownMethodStillGets501() throws {
        // Split anywhere after the method (before it, the method is not yet known to be
        // one llhttp lacks: "B" could start another method).
        XCTAssertEqual(try statuses("BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n"), [501])
    }

    // MARK: - --limit-request-field-size counts the line with its CRLF, as Gunicorn does

    func testAFieldLineIsCountedWithItsCRLF() throws {
        // "X: " + value + CRLF: 8,188 bytes of line are 8,190 with the CRLF (Gunicorn's default limit).
        let fits = "X: " + String(repeating: "a", count: 8188 - 3)
        let over = "X: " + String(repeating: "a", count: 8189 - 3)
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\(fits)\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 200)
        let d = try connection()
        d.send("GET / HTTP/1.1\r\nHost: h\r\n\(over)\r\n\r\n")
        XCTAssertEqual(d.responses().first?.status, 431)
    }
}
