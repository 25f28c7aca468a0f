import XCTest
@testable import SrvCore

/// The text helpers that replace Foundation's (String(format:), trimmingCharacters, NSString
/// paths): they print what printf and Foundation printed (ties aside: they round half away from zero).
final class TextTests: XCTestCase {
    func testFixedDecimalsRoundLikePrintf() {
        XCTAssertEqual(String(fixed: 0, decimals: 3), "0.000")
        XCTAssertEqual(String(fixed: 1.5, decimals: 1), "1.5")
        XCTAssertEqual(String(fixed: 0.26, decimals: 1), "0.3")
        XCTAssertEqual(String(fixed: 2.0004, decimals: 3), "2.000")
        XCTAssertEqual(String(fixed: 2.0005001, decimals: 3), "2.001")
        XCTAssertEqual(String(fixed: 0.000123, decimals: 6), "0.000123")
        XCTAssertEqual(String(fixed: 12.9999, decimals: 2), "13.00")
        XCTAssertEqual(String(fixed: 59.6, decimals: 0), "60")
        XCTAssertEqual(String(fixed: -1.26, decimals: 1), "-1.3")
        XCTAssertEqual(String(fixed: -0.01, decimals: 1), "0.0", "no negative zero")
        XCTAssertEqual(String(fixed: 1234567.5, decimals: 3), "1234567.500")
    }

    func testHexBytePaddingTrimmingAndDirectories() {
        XCTAssertEqual(String(format2: 0x0a), "0a")
        XCTAssertEqual(String(format2: 0xff), "ff")
        XCTAssertEqual("ab".padded(4), "ab  ")
        XCTAssertEqual("abcdef".padded(4), "abcdef")
        XCTAssertEqual(" \t 123\r\n".trimmingWhitespace, "123")
        XCTAssertEqual("  ".trimmingWhitespace, "")
        XCTAssertEqual("a b".trimmingWhitespace, "a b")
        XCTAssertEqual("/srv/apps/libblog.so".directoryPart, "/srv/apps")
        XCTAssertEqual("libblog.so".directoryPart, ".")
        XCTAssertEqual("/libblog.so".directoryPart, "/")
    }

    func testStatusDurations() {
        XCTAssertEqual(ArbiterStatus.duration(0.4), "0s")
        XCTAssertEqual(ArbiterStatus.duration(59.4), "59s")
        XCTAssertEqual(ArbiterStatus.duration(59.6), "1m00s")
        XCTAssertEqual(ArbiterStatus.duration(125), "2m05s")
        XCTAssertEqual(ArbiterStatus.duration(3600 * 2 + 60 * 7 + 30), "2h07m")
    }

    func testInstantsPrintMilliseconds() {
        XCTAssertEqual("\(Instant(nanoseconds: 1_234_600_000))", "1.235 s")
    }
}
