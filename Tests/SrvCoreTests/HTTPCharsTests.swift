import CSrvSystem
import XCTest
import Foundation
@testable import SrvCore

/// The response path's byte helpers (CSrvSystem's http_chars.c and HTTPChars).
final class HTTPCharsTests: XCTestCase {
    func testTokensAndValues() {
        XCTAssertTrue("Content-Type".utf8.allSatisfy(HTTPChars.isToken))
        XCTAssertFalse("Bad Header".utf8.allSatisfy(HTTPChars.isToken))
        XCTAssertFalse("a:b".utf8.allSatisfy(HTTPChars.isToken))
        func value(_ s: String) -> Bool {
            var s = s
            return s.withUTF8 { HTTPChars.isFieldValue(UnsafeRawBufferPointer($0)) }
        }
        XCTAssertTrue(value("text/plain; q=1\t"))
        XCTAssertFalse(value("x\r\nInjected: 1"))
    }

    /// The response path's copy-and-check of an application's header (C, http_chars.c).
    func testPutField() {
        func put(_ name: String, _ value: String) -> String? {
            var dst = [UInt8](repeating: 0, count: name.utf8.count + value.utf8.count + 4)
            let n = dst.withUnsafeMutableBufferPointer { d in
                name.withCString { np in value.withCString { vp in
                    srv_http_put_field(d.baseAddress!, np, strlen(np), vp, strlen(vp))
                } }
            }
            return n == 0 ? nil : String(decoding: dst.prefix(n), as: UTF8.self)
        }
        XCTAssertEqual(put("Content-Type", "text/plain; q=1\t"), "Content-Type: text/plain; q=1\t\r\n")
        XCTAssertEqual(put("X-Empty", ""), "X-Empty: \r\n")
        XCTAssertEqual(put("X-Obs", "caf\u{e9}"), "X-Obs: caf\u{e9}\r\n")  // obs-text passes
        XCTAssertNil(put("", "v"))
        XCTAssertNil(put("Bad Header", "v"))
        XCTAssertNil(put("a:b", "v"))
        XCTAssertNil(put("X-Split", "x\r\nInjected: 1"))
        XCTAssertNil(put("X-Nul", "a\u{1}b"))
        XCTAssertNil(put("X-Del", "a\u{7f}"))
    }

    func testHopByHop() {
        for name in ["Connection", "TRANSFER-ENCODING", "keep-alive", "Upgrade"] {
            var n = name
            XCTAssertTrue(n.withUTF8 { HTTPChars.isHopByHop(UnsafeRawBufferPointer($0)) }, name)
        }
        var n = "Content-Length"
        XCTAssertFalse(n.withUTF8 { HTTPChars.isHopByHop(UnsafeRawBufferPointer($0)) })
    }

    func testDecimalParsing() {
        XCTAssertEqual(HTTPChars.parseDecimal("0"), 0)
        XCTAssertEqual(HTTPChars.parseDecimal("1048576"), 1_048_576)
        XCTAssertNil(HTTPChars.parseDecimal("-1"))
        XCTAssertNil(HTTPChars.parseDecimal("5, 5"))
        XCTAssertNil(HTTPChars.parseDecimal(""))
        XCTAssertNil(HTTPChars.parseDecimal("99999999999999999999"))
    }
}
