import Foundation
import XCTest
@testable import SrvCore

final class SettingsTests: XCTestCase {
    func testBindAddressForms() throws {
        XCTAssertEqual(try BindAddress.parse("127.0.0.1:8000").get(), .tcp(host: "127.0.0.1", port: 8000))
        XCTAssertEqual(try BindAddress.parse("[::1]:9000").get(), .tcp(host: "::1", port: 9000))
        // A bare port is loopback: every address only when the address says so.
        XCTAssertEqual(try BindAddress.parse(":80").get(), .tcp(host: "127.0.0.1", port: 80))
        XCTAssertEqual(try BindAddress.parse("8080").get(), .tcp(host: "127.0.0.1", port: 8080))
        XCTAssertEqual(try BindAddress.parse("0.0.0.0:8080").get(), .tcp(host: "0.0.0.0", port: 8080))
        XCTAssertEqual(try BindAddress.parse("[::]:8080").get(), .tcp(host: "::", port: 8080))
        XCTAssertEqual(try BindAddress.parse("unix:/tmp/srv.sock").get(), .unix(path: "/tmp/srv.sock"))
    }

    func testBindAddressErrorsSayWhatWasExpected() {
        guard case .failure(let e) = BindAddress.parse("127.0.0.1:http") else { return XCTFail("accepted a bad port") }
        XCTAssertTrue(e.description.contains("expected HOST:PORT"), e.description)
        XCTAssertTrue(e.description.contains("\"http\""), e.description)
        guard case .failure(let e2) = BindAddress.parse("[::1:80") else { return XCTFail("accepted a bad IPv6 bind") }
        XCTAssertTrue(e2.description.contains("closing ]"), e2.description)
        guard case .failure = BindAddress.parse("unix:") else { return XCTFail("accepted unix: without a path") }
        guard case .failure = BindAddress.parse("host:70000") else { return XCTFail("accepted port 70000") }
    }

    func testValidationNamesEachProblem() {
        var s = Settings()
        XCTAssertTrue(s.validate().contains { $0.contains("no application") })
        s.mounts = [.init(prefix: "", path: "/x.so")]
        XCTAssertEqual(s.validate(), [])
        s.workers = 0
        s.logLevel = "loud"
        s.binds = ["nope:port"]
        let problems = s.validate()
        XCTAssertTrue(problems.contains { $0.hasPrefix("workers: expected at least 1, found 0") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("log-level") && $0.contains("\"loud\"") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("bind \"nope:port\"") }, "\(problems)")
    }

    func testAPrefixMountedTwiceServesTheLastOne() throws {
        var command = SettingSources.CommandFlags()
        let values = try SettingSources.parseFlags(["--mount", "/a=/x.so", "--mount", "/a/=/y.so"], command: &command)
        let s = try SettingSources.resolveUnchecked(flags: values, environment: [:])
        XCTAssertEqual(s.mounts, [.init(prefix: "/a", path: "/y.so")])
    }

    func testSettingsRoundTripThroughJSON() throws {
        // The master hands workers their settings as JSON.
        var s = Settings()
        s.mounts = [.init(prefix: "/blog", path: "/srv/libblog.so")]
        s.forwardedAllowIPs = try AddressList(parsing: "10.0.0.1, 10.0.0.2")
        s.accessLogFormat = AccessLogFormat("%(h)s %(s)s")
        let data = try JSONEncoder().encode(s)
        XCTAssertEqual(try JSONDecoder().decode(Settings.self, from: data), s)
    }
}

final class ConfigFileTests: XCTestCase {
    private func settings(file text: String, flags: [String] = []) throws -> Settings {
        let path = NSTemporaryDirectory() + "srv-conf-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        defer { unlink(path) }
        var command = SettingSources.CommandFlags()
        let values = try SettingSources.parseFlags(["-c", path] + flags, command: &command)
        return try SettingSources.resolve(flags: values, environment: [:])
    }

    func testLinesAreReadAsTheirFlags() throws {
        let s = try settings(file: """
            # a comment
            workers = 4
            bind = 127.0.0.1:8000
            bind = unix:/tmp/s.sock   # trailing comment
            keep_alive = 5
            app = "/srv/libblog.so"
            reload = true
            access-logformat = "%(h)s %(r)s"
            """)
        XCTAssertEqual(s.workers, 4)
        XCTAssertEqual(s.binds, ["127.0.0.1:8000", "unix:/tmp/s.sock"])
        XCTAssertEqual(s.keepAlive, 5)
        XCTAssertEqual(s.mounts, [.init(prefix: "", path: "/srv/libblog.so")])
        XCTAssertTrue(s.reload)
        XCTAssertEqual(s.accessLogFormat, AccessLogFormat("%(h)s %(r)s"))
    }

    func testFlagsWinAndTheirListsReplaceTheFilesLists() throws {
        let s = try settings(file: "app = /a.so\nworkers = 3\nbind = :9000\nenv = A=1\n",
                             flags: ["-w", "2", "-b", "127.0.0.1:9001", "-e", "B=2"])
        XCTAssertEqual(s.workers, 2)
        XCTAssertEqual(s.binds, ["127.0.0.1:9001"])
        XCTAssertEqual(s.environment, ["A=1", "B=2"], "-e adds to the file's variables")
    }

    func testUnknownSettingNamesFileAndLine() {
        XCTAssertThrowsError(try ConfigFile.lines(from: "workers = 2\nwokers = 3", path: "srv.conf")) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("srv.conf line 2"), text)
            XCTAssertTrue(text.contains("unknown setting \"wokers\" (did you mean workers?)"), text)
        }
    }

    func testABadValueNamesItsLine() {
        XCTAssertThrowsError(try settings(file: "app = /a.so\n\nworkers = many\n")) { e in
            XCTAssertTrue("\(e)".contains("line 3: workers: expected an integer, found \"many\""), "\(e)")
        }
    }

    func testLineWithoutEqualsIsRefused() {
        XCTAssertThrowsError(try ConfigFile.lines(from: "workers 2", path: "c")) { e in
            XCTAssertTrue("\(e)".contains("expected `name = value`"), "\(e)")
        }
    }

    func testSwitchNeedsABoolean() throws {
        XCTAssertTrue(try settings(file: "app = /a.so\nreload = on").reload)
        XCTAssertFalse(try settings(file: "app = /a.so\nreload = on\nreload = off").reload, "off undoes on")
        XCTAssertThrowsError(try settings(file: "app = /a.so\nreload = maybe"))
    }

    func testShellWords() throws {
        XCTAssertEqual(try ShellWords.split("--workers 2  -b '127.0.0.1:9000' --access-logformat \"%(h)s %(s)s\""),
                       ["--workers", "2", "-b", "127.0.0.1:9000", "--access-logformat", "%(h)s %(s)s"])
        XCTAssertEqual(try ShellWords.split(#"a\ b c"#), ["a b", "c"])
        XCTAssertThrowsError(try ShellWords.split("'unterminated"))
    }
}

final class AccessLogFormatTests: XCTestCase {
    func testCombinedFormatAtoms() {
        let atoms = AccessLogFormat.combined.segments.compactMap { s -> String? in
            if case .atom(let a) = s { return a } else { return nil }
        }
        XCTAssertEqual(atoms, ["h", "l", "u", "t", "r", "s", "b", "f", "a", "id"], "combined, then the request id")
    }

    func testRequestHeaderAtomAndLiterals() {
        let segments = AccessLogFormat("%(h)s -> %({X-Request-Id}i)s!").segments
        XCTAssertEqual(segments.count, 4)
        if case .requestHeader(let name) = segments[2] { XCTAssertEqual(name, "x-request-id") } else { XCTFail("\(segments)") }
        if case .literal(let t) = segments[3] { XCTAssertEqual(t, "!") } else { XCTFail("\(segments)") }
    }
}

final class AppsDirectoryTests: XCTestCase {
    func testMountNames() {
        XCTAssertEqual(AppsDirectory.mountName(forFile: "libblog.so"), "blog")
        XCTAssertEqual(AppsDirectory.mountName(forFile: "shop.so"), "shop")
        XCTAssertEqual(AppsDirectory.mountName(forFile: "lib.so"), "lib")
        XCTAssertNil(AppsDirectory.mountName(forFile: "libblog.so.1"))
        XCTAssertNil(AppsDirectory.mountName(forFile: ".libblog.so"))
        XCTAssertNil(AppsDirectory.mountName(forFile: "README.md"))
        XCTAssertNil(AppsDirectory.mountName(forFile: "bad name.so"))
    }
}
