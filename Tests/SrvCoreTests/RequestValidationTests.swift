import NIOCore
import XCTest
@testable import SrvCore

/// RequestValidation's rewrites of input before llhttp reads it: the rewritten bytes say
/// the same thing in the syntax llhttp accepts, and keep their length.
final class RequestValidationTests: XCTestCase {
    private func closedUp(_ text: String) -> (String, RequestValidation.ChunkLine) {
        var buffer = ByteBuffer(string: text)
        let complete = RequestValidation.closeUpChunkExtensions(in: &buffer)
        return (String(buffer: buffer), complete)
    }

    func testBWSAroundSeparatorsIsClosedUpAndTheSizeKeepsItsValue() {
        XCTAssertEqual(closedUp("3 ; a = b\r\nabc").0, "00003;a=b\r\nabc")
        XCTAssertEqual(closedUp("a;\tx\r\n").0, "0a;x\r\n")
        XCTAssertEqual(closedUp("3;a;b = c\n").0, "003;a;b=c\n")
    }

    func testQuotedStringsAndOtherWhitespaceAreLeftAlone() {
        XCTAssertEqual(closedUp("3;a=\" ; = \"\r\n").0, "3;a=\" ; = \"\r\n")
        XCTAssertEqual(closedUp("3;a=\"x\\\" \" ; b\r\n").0, "003;a=\"x\\\" \";b\r\n")
        XCTAssertEqual(closedUp("3;a b\r\n").0, "3;a b\r\n")  // not BWS: llhttp refuses it
        XCTAssertEqual(closedUp("3\r\nabc; d = e").0, "3\r\nabc; d = e")  // only the size line
    }

    func testALineNotYetComplete() {
        XCTAssertEqual(closedUp("3 ; a").1, .incomplete)
        XCTAssertEqual(closedUp("3 ; a\r\n").1, .ready)
        XCTAssertEqual(closedUp(String(repeating: "3", count: 5000)).1, .ready)  // past maxLine: llhttp's
    }

    func testWhitespaceAfterTheSizeIsBWSOnlyBeforeASemicolon() {
        XCTAssertEqual(closedUp("a \r\n").1, .whitespaceAfterSize)
        XCTAssertEqual(closedUp("a\t\t\r\n").1, .whitespaceAfterSize)
        XCTAssertEqual(closedUp("a x\r\n").1, .whitespaceAfterSize)
        XCTAssertEqual(closedUp("a \t;x\r\n").1, .ready)
    }
}
