import Foundation
import Glibc
import XCTest
@testable import SrvCore

/// Who may put code into srv (issue 29, item 26): a plugin, and every directory above it,
/// belongs to root or srv's user and is writable by no one else, as OpenSSH's StrictModes.
final class PathTrustTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "srv-trust-\(UUID().uuidString)"
        XCTAssertEqual(mkdir(dir, 0o700), 0)
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/libx.so", contents: Data("x".utf8)))
        chmod("\(dir)/libx.so", 0o644)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testAPrivateFileInAPrivateDirectoryIsTrusted() {
        XCTAssertNil(PathTrust.problem("\(dir)/libx.so"))
        XCTAssertNoThrow(try PathTrust.check("\(dir)/libx.so"))
    }

    func testAFileOthersMayWriteIsNot() {
        chmod("\(dir)/libx.so", 0o666)
        let p = PathTrust.problem("\(dir)/libx.so")
        XCTAssertEqual(p?.culprit, "\(dir)/libx.so")
        XCTAssertEqual(p?.found, "mode 666: writable by anyone")
        chmod("\(dir)/libx.so", 0o664)
        XCTAssertEqual(PathTrust.problem("\(dir)/libx.so")?.found, "mode 664: writable by its group")
    }

    func testADirectoryAboveOthersMayWriteIsNot() throws {
        try FileManager.default.createDirectory(atPath: "\(dir)/a/b", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: "\(dir)/a/b/liby.so", contents: Data("y".utf8))
        chmod("\(dir)/a/b/liby.so", 0o644)
        chmod("\(dir)/a/b", 0o755)
        chmod("\(dir)/a", 0o777)
        XCTAssertEqual(PathTrust.problem("\(dir)/a/b/liby.so")?.culprit, "\(dir)/a")
        XCTAssertThrowsError(try PathTrust.check("\(dir)/a/b/liby.so")) {
            XCTAssertEqual(($0 as? PluginError)?.reason, "writable-by-others")
            XCTAssertTrue("\($0)".contains("chmod go-w \(dir)/a`"), "\($0)")
            XCTAssertTrue("\($0)".contains("--insecure-plugins"), "\($0)")
        }
    }

    func testASymbolicLinkIsJudgedByWhereItLeads() {
        symlink("\(dir)/libx.so", "\(dir)/link.so")
        chmod("\(dir)/libx.so", 0o666)
        XCTAssertEqual(PathTrust.problem("\(dir)/link.so")?.culprit, "\(dir)/libx.so")
    }

    func testAStickyDirectoryAboveIsTrustedButNotAStickyTarget() throws {
        // /tmp (1777): nobody can rename or remove another user's entry there.
        chmod(dir, 0o1777)
        XCTAssertNil(PathTrust.problem("\(dir)/libx.so"))
        XCTAssertNotNil(PathTrust.problem(dir), "an apps directory that is itself writable by anyone")
    }

    func testAFileOfAnotherOwnerIsNot() {
        if geteuid() == 0 {
            XCTAssertEqual(chown("\(dir)/libx.so", 4242, 4242), 0)
            XCTAssertEqual(PathTrust.problem("\(dir)/libx.so")?.found, "owned by uid 4242, neither root nor srv's user (uid 0)")
        } else {
            // srv of another user would not trust this process's file.
            let other: uid_t = geteuid() == 4242 ? 4243 : 4242
            XCTAssertEqual(PathTrust.problem("\(dir)/libx.so", owner: other)?.found,
                           "owned by uid \(geteuid()), neither root nor srv's user (uid \(other))")
        }
    }

    func testALinkOfAnotherUserOnTheWayIsNot() throws {
        // /tmp/app.so, a link another user made in a sticky directory: it could point at a
        // trusted file when srv checks and at theirs when srv reads.
        try XCTSkipUnless(geteuid() == 0, "needs root to give a link to another user")
        symlink("\(dir)/libx.so", "\(dir)/theirs.so")
        XCTAssertEqual(lchown("\(dir)/theirs.so", 4242, 4242), 0)
        XCTAssertEqual(PathTrust.problem("\(dir)/theirs.so")?.culprit, "\(dir)/theirs.so")
        XCTAssertEqual(PathTrust.problem("\(dir)/theirs.so")?.found, "a symbolic link owned by uid 4242, neither root nor srv's user (uid 0)")
    }

    func testTheFileReadIsJudgedAgainOnItsDescriptor() {
        // The snapshot judges the descriptor it reads: a file made writable after the
        // path's check is refused all the same.
        chmod("\(dir)/libx.so", 0o666)
        XCTAssertThrowsError(try Snapshot.readFile("\(dir)/libx.so", strict: true)) {
            XCTAssertEqual(($0 as? PluginError)?.reason, "writable-by-others")
        }
        XCTAssertNoThrow(try Snapshot.readFile("\(dir)/libx.so", strict: false))
    }

    func testAMissingFileIsLeftToTheReader() {
        XCTAssertNil(PathTrust.problem("\(dir)/nothing.so"))
    }
}
