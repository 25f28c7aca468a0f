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
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
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
    private func contents(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

    func testASnapshotIsASealedCopyOfTheContentNamedByItsHash() throws {
        let dir = NSTemporaryDirectory() + "srv-snap-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let source = "\(dir)/libx.so"
        _ = FileManager.default.createFile(atPath: source, contents: Data("abc".utf8))
        let s = try Snapshot.take(of: source, strict: false)
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        XCTAssertEqual(s.hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(s.path, "/proc/self/fd/\(s.descriptor)")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: s.path), "/memfd:srv-ba7816bf8f01-libx.so (deleted)")
        XCTAssertEqual(contents(s.path), Data("abc".utf8))
        // Overwriting or removing the original leaves the snapshot intact.
        _ = FileManager.default.createFile(atPath: source, contents: Data("abcd".utf8))
        try FileManager.default.removeItem(atPath: dir)
        XCTAssertEqual(contents(s.path), Data("abc".utf8))
        // Sealed: nobody, not even the master, can change it.
        let fd = open(s.path, O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0, "the snapshot opens for writing; only its seals refuse the write")
        XCTAssertEqual(write(fd, "x", 1), -1)
        XCTAssertEqual(errno, EPERM)
        close(fd)
        XCTAssertEqual(contents(s.path), Data("abc".utf8))
    }

    func testTheDescriptorClosesWithTheLastSnapshotThatHoldsIt() throws {
        let source = NSTemporaryDirectory() + "srv-snap-\(UUID().uuidString).so"
        _ = FileManager.default.createFile(atPath: source, contents: Data("abc".utf8))
        defer { unlink(source) }
        var snapshot: Snapshot? = try Snapshot.take(of: source, strict: false)
        let fd = snapshot!.descriptor
        var copy = snapshot
        snapshot = nil
        XCTAssertNotEqual(fcntl(fd, F_GETFD), -1, "a copy still holds it")
        XCTAssertEqual(copy?.inherited(at: 9).path, "/proc/self/fd/9")
        XCTAssertEqual(copy, copy?.inherited(at: 9), "the same build of the same file")
        copy = nil
        XCTAssertNil(copy)
        XCTAssertEqual(fcntl(fd, F_GETFD), -1, "closed with the last snapshot that held it")
    }

    func testAMissingFileIsRefusedByName() {
        XCTAssertThrowsError(try Snapshot.take(of: "/nonexistent/libx.so", strict: true)) {
            XCTAssertEqual(($0 as? PluginError)?.reason, "missing-file")
        }
    }

    func testLongInputHash() throws {
        let source = NSTemporaryDirectory() + "srv-snap-\(UUID().uuidString).so"
        _ = FileManager.default.createFile(atPath: source, contents: Data(repeating: UInt8(ascii: "a"), count: 1_000_000))
        defer { unlink(source) }
        // SHA-256 of one million "a", FIPS 180-2 appendix B.3.
        XCTAssertEqual(try Snapshot.take(of: source, strict: false).hash,
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}
