import CSrvSystem
import XCTest
import Foundation
@testable import SrvCore

/// The refusals srv can decide from the file alone (the ones that need dlopen are covered
/// by the integration tests, which build a broken plugin for each).
final class ELFCheckTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "srv-elf-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func write(_ name: String, _ bytes: [UInt8]) -> String {
        let path = "\(dir!)/\(name)"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    /// A 64-byte ELF header for the host machine with the given type.
    func header(type: UInt16, elfClass: UInt8 = 2, machine: UInt16? = nil) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 64)
        h[0] = 0x7f; h[1] = 0x45; h[2] = 0x4c; h[3] = 0x46
        h[4] = elfClass
        h[5] = 1
        h[16] = UInt8(type & 0xff)
        let m = machine ?? ELFCheck.host.machine
        h[18] = UInt8(m & 0xff); h[19] = UInt8(m >> 8)
        return h
    }

    func refusal(_ path: String) -> PluginError? {
        do { try ELFCheck.validate(path: path, display: path) } catch let e as PluginError { return e } catch { return nil }
        return nil
    }

    func testMissingFile() {
        XCTAssertEqual(refusal("\(dir!)/absent.so")?.reason, "missing-file")
    }

    func testNotELFShowsWhatItFound() {
        let e = refusal(write("text.so", Array("#!/bin/sh\n".utf8)))
        XCTAssertEqual(e?.reason, "not-elf")
        XCTAssertTrue(e?.description.contains("\"#!/b\"") ?? false, e?.description ?? "")
        XCTAssertEqual(refusal(write("empty.so", []))?.reason, "not-elf")
    }

    func testWrongClassAndMachine() {
        XCTAssertEqual(refusal(write("c32.so", header(type: 3, elfClass: 1)))?.reason, "wrong-elf-class")
        let other: UInt16 = ELFCheck.host.machine == 62 ? 183 : 62
        let e = refusal(write("arm.so", header(type: 3, machine: other)))
        XCTAssertEqual(e?.reason, "wrong-machine")
        XCTAssertTrue(e?.description.contains(ELFCheck.machineName(other)) ?? false)
    }

    func testObjectFilesAndExecutablesAreNotSharedObjects() {
        let rel = refusal(write("obj.so", header(type: 1)))
        XCTAssertEqual(rel?.reason, "not-shared-object")
        XCTAssertTrue(rel?.description.contains("ET_REL") ?? false)
        XCTAssertTrue(refusal(write("exe.so", header(type: 2)))?.description.contains("ET_EXEC") ?? false)
    }

    func testDirectoryIsRefused() {
        XCTAssertEqual(refusal(dir)?.reason, "not-a-file")
    }

    func testMessagesNameTheFileAndWhatToDo() {
        let e = PluginError.abiMajorMismatch(path: "/apps/libblog.so", found: 2)
        XCTAssertTrue(e.description.hasPrefix("/apps/libblog.so:"))
        XCTAssertTrue(e.description.contains("ABI 2.x"))
        XCTAssertTrue(e.description.contains("ABI \(GatewayABI.major).\(GatewayABI.minor)"))
        XCTAssertTrue(e.description.contains("Rebuild"))
    }
}

final class SnapshotTests: XCTestCase {
    func testContentAddressedCopy() throws {
        let dir = NSTemporaryDirectory() + "srv-snap-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let source = "\(dir)/libx.so"
        FileManager.default.createFile(atPath: source, contents: Data("abc".utf8))
        // The caller prepares the directory (the master: RuntimeDirectory.prepare, 0700).
        try FileManager.default.createDirectory(atPath: "\(dir)/snaps", withIntermediateDirectories: true)
        let s = try Snapshot.take(of: source, into: "\(dir)/snaps")
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        XCTAssertEqual(s.hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertTrue(s.path.hasSuffix("/ba7816bf8f01cfea-libx.so"))
        XCTAssertEqual(FileManager.default.contents(atPath: s.path), Data("abc".utf8))
        // Overwriting the original in place leaves the snapshot intact.
        FileManager.default.createFile(atPath: source, contents: Data("abcd".utf8))
        XCTAssertEqual(FileManager.default.contents(atPath: s.path), Data("abc".utf8))
        let s2 = try Snapshot.take(of: source, into: "\(dir)/snaps")
        XCTAssertNotEqual(s2.hash, s.hash)
        XCTAssertNotEqual(s2.path, s.path)
    }

    func testLongInputHash() throws {
        let dir = NSTemporaryDirectory() + "srv-snap-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let source = "\(dir)/libm.so"
        FileManager.default.createFile(atPath: source, contents: Data(repeating: UInt8(ascii: "a"), count: 1_000_000))
        // SHA-256 of one million "a", FIPS 180-2 appendix B.3.
        XCTAssertEqual(try Snapshot.take(of: source, into: dir).hash,
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

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
