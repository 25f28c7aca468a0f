import Foundation
import XCTest
@testable import SrvCore

/// Each setting is declared once (Setting.all); these tests hold the flags, the config
/// file's names, the defaults `srv --help` shows and `Settings` to one another.
final class SettingTableTests: XCTestCase {
    private func parse(_ flags: [String]) throws -> Settings {
        var command = SettingSources.CommandFlags()
        let values = try SettingSources.parseFlags(["--app", "/a.so"] + flags, command: &command)
        var s = Settings()
        for (i, v) in values.enumerated() { try v.setting.read(&s, v.value, i == 0 || values[i - 1].setting.name != v.setting.name) }
        return s
    }

    /// A valid value of each setting that is not its default.
    private let samples: [String: String] = [
        "app": "/b.so", "mount": "/m=/m.so", "apps-dir": "/tmp", "bind": "127.0.0.1:9999", "backlog": "16",
        "reuse-port": "true", "workers": "3", "threads": "4", "keep-alive": "7", "body-timeout": "9",
        "send-timeout": "11", "metrics-bind": "127.0.0.1:9998", "limit-request-line": "100",
        "limit-request-fields": "7", "limit-request-field-size": "99", "limit-request-body": "1234",
        "body-memory-limit": "4321", "spool-dir": "/var/tmp", "forwarded-allow-ips": "10.0.0.0/8",
        "proxy-protocol": "true", "proxy-allow-from": "10.0.0.1", "access-logfile": "-",
        "access-logformat": "%(h)s", "error-logfile": "/tmp/srv-error.log", "log-level": "debug", "pid": "/tmp/p",
        "timeout": "5", "graceful-timeout": "6", "boot-timeout": "8", "max-requests": "100",
        "max-requests-jitter": "10", "snapshot-dir": "/tmp/snap", "runtime-dir": "/tmp/rt", "user": "nobody",
        "group": "nogroup", "chdir": "/tmp", "env": "A=1", "umask": "007", "reload": "true", "reload-delay": "3",
        "status-file": "/tmp/status", "config": "/tmp/srv.conf",
    ]

    func testNamesAndShortFlagsAreUnique() {
        let names = Setting.all.map(\.name)
        XCTAssertEqual(Set(names).count, names.count, "\(names)")
        let shorts = Setting.all.compactMap(\.short)
        XCTAssertEqual(Set(shorts).count, shorts.count, "\(shorts)")
    }

    func testEverySettingIsReadTheSameFromAFlagAndFromTheConfigFile() throws {
        for setting in Setting.all where setting.inConfigFile {
            let value = try XCTUnwrap(samples[setting.name], "no sample value for \(setting.name)")
            let flag: [String]
            if case .toggle = setting.kind { flag = ["--\(setting.name)"] } else { flag = ["--\(setting.name)", value] }
            let fromFlag = try parse(flag)
            let lines = try ConfigFile.lines(from: "\(setting.name.replacingOccurrences(of: "-", with: "_")) = \(value)", path: "c")
            var fromFile = try parse([])
            try lines[0].setting.read(&fromFile, lines[0].value, true)
            XCTAssertEqual(fromFlag, fromFile, setting.name)
            XCTAssertNotEqual(fromFlag, try parse([]), "--\(setting.name) \(value) changed nothing")
        }
    }

    func testEveryDefaultThatHelpShowsIsTheRealDefault() throws {
        let help = SettingSources.optionsHelp(width: 1000)
        for setting in Setting.all {
            XCTAssertTrue(help.contains("--\(setting.name)"), "--\(setting.name) missing from srv --help")
            guard let shown = setting.defaultText else { continue }
            XCTAssertTrue(help.contains("(default \(shown))"), "\(setting.name): \(help)")
            XCTAssertEqual(try parse(["--\(setting.name)", shown]), try parse([]),
                           "--\(setting.name) \(shown), the default help shows, is not Settings()' default")
            XCTAssertNil(setting.check(Settings()), "\(setting.name)'s default fails its own check")
        }
    }

    func testEveryPropertyOfSettingsHasASetting() {
        // Properties set by a setting of another name, or derived from others.
        let by: [String: String] = ["mounts": "mount", "binds": "bind", "spoolDirectory": "spool-dir",
                                    "accessLogFile": "access-logfile", "accessLogFormat": "access-logformat",
                                    "errorLogFile": "error-logfile", "pidFile": "pid", "snapshotDirectory": "snapshot-dir",
                                    "runtimeDirectory": "runtime-dir", "environment": "env", "configFile": "config",
                                    "forwardedAllowIPs": "forwarded-allow-ips", "proxyAllowFrom": "proxy-allow-from"]
        let derived: Set<String> = ["workerUID", "workerGID"]
        for child in Mirror(reflecting: Settings()).children {
            guard let property = child.label, !derived.contains(property) else { continue }
            let name = by[property] ?? property.reduce(into: "") { s, c in s += c.isUppercase ? "-\(c.lowercased())" : String(c) }
            XCTAssertNotNil(Setting.named(name), "Settings.\(property) has no setting (expected one named \(name))")
        }
    }

    func testAnInvalidValueSaysWhatWasExpected() {
        for (flags, message) in [(["-w", "0"], "workers: expected at least 1, found 0"),
                                 (["--keep-alive", "-1"], "keep-alive: expected seconds >= 0, found -1"),
                                 (["--umask", "9"], "expected an octal mode mask")] {
            var command = SettingSources.CommandFlags()
            XCTAssertThrowsError(try SettingSources.resolve(flags: SettingSources.parseFlags(["--app", "/a.so"] + flags, command: &command),
                                                            environment: [:])) { e in
                XCTAssertTrue("\(e)".contains(message), "\(flags): \(e)")
            }
        }
    }

    func testUnknownFlagsAndMissingValuesAreRefused() {
        var command = SettingSources.CommandFlags()
        XCTAssertThrowsError(try SettingSources.parseFlags(["--wrokers", "2"], command: &command)) { e in
            XCTAssertTrue("\(e)".contains("did you mean --workers?"), "\(e)")
        }
        XCTAssertThrowsError(try SettingSources.parseFlags(["-w"], command: &command))
        XCTAssertThrowsError(try SettingSources.parseFlags(["--reload=yes"], command: &command))
        XCTAssertThrowsError(try SettingSources.parseFlags(["--no-reload"], command: &command), "reload has no --no- form")
    }

    func testFlagSpellings() throws {
        let s = try parse(["-w4", "--keep-alive=3", "--limit-request-field_size", "10", "--no-reuse-port", "-e", "A=1"])
        XCTAssertEqual(s.workers, 4)
        XCTAssertEqual(s.keepAlive, 3)
        XCTAssertEqual(s.limitRequestFieldSize, 10)
        XCTAssertEqual(s.reusePort, false)
        XCTAssertEqual(s.environment, ["A=1"])
    }
}
