import Foundation
import XCTest
@testable import SrvCore

/// Each setting is declared once (Setting.all); these tests hold the flags, the config
/// file's names, the defaults `srv --help` shows and `Settings` to one another.
final class SettingTableTests: XCTestCase {
    /// The settings a command line gives (one source, as `SettingSources.resolve` applies
    /// it), before the checks.
    private func parse(_ flags: [String]) throws -> Settings {
        var command = SettingSources.CommandFlags()
        let values = try SettingSources.parseFlags(["--app", "/a.so"] + flags, command: &command)
        var s = Settings()
        try SettingSources.apply(values, to: &s) { "--\(values[$0].setting.name)" }
        return s
    }

    /// The defaults README, the examples and operators rely on, written out: a change of one
    /// is deliberate and changes this table too.
    private let documentedDefaults: [String: String] = [
        "backlog": "2048", "workers": "1", "keep-alive": "2", "body-timeout": "60", "send-timeout": "60",
        "limit-request-line": "4094", "limit-request-fields": "100", "limit-request-field-size": "8190",
        "limit-request-body": "67108864", "body-memory-limit": "1048576", "spool-dir": "/tmp",
        "forwarded-allow-ips": "127.0.0.1,::1,unix", "proxy-allow-from": "127.0.0.1,::1", "error-logfile": "-",
        "log-level": "info", "timeout": "30", "graceful-timeout": "30", "boot-timeout": "30", "max-requests": "0",
        "reload-delay": "1",
    ]

    /// A valid value of each setting that is not its default.
    private let samples: [String: String] = [
        "app": "/b.so", "mount": "/m=/m.so", "apps-dir": "/tmp", "bind": "127.0.0.1:9999", "backlog": "16",
        "reuse-port": "true", "insecure-plugins": "true", "workers": "3", "threads": "4", "keep-alive": "7", "body-timeout": "9",
        "send-timeout": "11", "metrics-bind": "127.0.0.1:9998", "limit-request-line": "100",
        "limit-request-fields": "7", "limit-request-field-size": "99", "limit-request-body": "1234",
        "body-memory-limit": "4321", "spool-dir": "/var/tmp", "forwarded-allow-ips": "10.0.0.0/8",
        "proxy-protocol": "true", "proxy-allow-from": "10.0.0.1", "access-logfile": "-",
        "access-logformat": "%(h)s", "error-logfile": "/tmp/srv-error.log", "log-level": "debug", "pid": "/tmp/p",
        "timeout": "5", "graceful-timeout": "6", "boot-timeout": "8", "max-requests": "100",
        "max-requests-jitter": "10", "runtime-dir": "/tmp/rt", "user": "nobody",
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
        let dir = NSTemporaryDirectory() + "srv-settings-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for setting in Setting.all where setting.inConfigFile && setting.name != "app" {
            let value = try XCTUnwrap(samples[setting.name], "no sample value for \(setting.name)")
            var flag = ["--\(setting.name)"]
            if case .toggle = setting.kind {} else { flag.append(value) }
            var command = SettingSources.CommandFlags()
            let fromFlag = try SettingSources.resolveUnchecked(
                flags: SettingSources.parseFlags(["--app", "/a.so"] + flag, command: &command), environment: [:])
            let file = dir + "/\(setting.name).conf"
            _ = FileManager.default.createFile(atPath: file, contents: Data("app = /a.so\n\(setting.name.replacingOccurrences(of: "-", with: "_")) = \(value)\n".utf8))
            var fromFile = try SettingSources.resolveUnchecked(
                flags: SettingSources.parseFlags(["-c", file], command: &command), environment: [:])
            fromFile.configFile = nil
            XCTAssertEqual(fromFlag, fromFile, setting.name)
            XCTAssertNotEqual(fromFlag, try parse([]), "--\(setting.name) \(value) changed nothing")
        }
    }

    func testEachSettingsHelpRowShowsItsDocumentedDefault() throws {
        let help = SettingSources.optionsHelp(width: 10_000)
        // One row per flag: its line and the indented lines that continue it.
        var rows: [String] = []
        for line in help.split(separator: "\n") {
            if line.hasPrefix("  -") || rows.isEmpty { rows.append(String(line)) } else { rows[rows.count - 1] += " " + line }
        }
        for setting in Setting.all {
            let flag = (setting.short.map { "  -\($0), " } ?? "  ") + "--\(setting.name)"
            let row = try XCTUnwrap(rows.first { $0.hasPrefix(flag + " ") || $0.hasPrefix(flag + "/") || $0 == flag },
                                    "--\(setting.name) missing from srv --help")
            let shown = setting.defaultText.map { "(default \($0))" }
            XCTAssertEqual(shown, documentedDefaults[setting.name].map { "(default \($0))" }, setting.name)
            if let shown = shown { XCTAssertTrue(row.contains(shown), "\(setting.name): \(row)") }
        }
    }

    func testEveryDocumentedDefaultIsTheDefaultSrvRunsWith() throws {
        for (name, value) in documentedDefaults {
            XCTAssertEqual(try parse(["--\(name)", value]), try parse([]), "--\(name) \(value) is not the default")
            XCTAssertNotNil(Setting.named(name), name)
        }
        XCTAssertTrue(Setting.problems(in: Settings()).isEmpty, "\(Setting.problems(in: Settings()))")
    }

    func testEveryPropertyOfSettingsHasASetting() {
        // Properties set by a setting of another name, or derived from others.
        let by: [String: String] = ["mounts": "mount", "binds": "bind", "spoolDirectory": "spool-dir",
                                    "accessLogFile": "access-logfile", "accessLogFormat": "access-logformat",
                                    "errorLogFile": "error-logfile", "pidFile": "pid",
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
