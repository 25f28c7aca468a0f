#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Where settings come from, in rising precedence: the defaults (`Settings()`), the config
/// file (`-c`), SRV_CMD_ARGS, the flags. All three are read through `Setting.all`, so a
/// setting means the same wherever it is written.
public enum SettingSources {
    /// Flags of the serving command itself, not settings (`--check-config`, `--help`).
    public struct CommandFlags {
        public var checkConfig = false
        public var help = false
        public var version = false
        public init() {}
    }

    /// One value of one setting, in the order it was given.
    public struct Value {
        public let setting: Setting
        public let value: String
    }

    /// Gunicorn's underscore spellings of long flags (`--limit-request-field_size`) as the
    /// dashed ones srv declares; values are left alone.
    public static func normalizingUnderscores(_ arguments: [String]) -> [String] {
        arguments.map { arg in
            guard arg.hasPrefix("--"), arg.contains("_") else { return arg }
            let name = arg.prefix { $0 != "=" }
            return String(name).replacingUnderscores() + arg.dropFirst(name.count)
        }
    }

    /// Reads flags: `--name VALUE`, `--name=VALUE`, `-x VALUE`, `-xVALUE`, `--toggle`,
    /// `--no-toggle` for a toggle whose default srv decides, and Gunicorn's underscore
    /// spellings (`--limit-request-field_size`). `--help` anywhere wins over a bad flag.
    public static func parseFlags(_ given: [String], command: inout CommandFlags) throws -> [Value] {
        let arguments = normalizingUnderscores(given)
        if arguments.contains(where: { $0 == "--help" || $0 == "-h" }) {
            command.help = true
            return []
        }
        var values: [Value] = []
        var i = 0
        func value(for setting: Setting, flag: String, inline: String?) throws -> String {
            if let v = inline { return v }
            i += 1
            guard i < arguments.count else {
                throw SettingsProblem("\(flag): expected a value (\(setting.valueName)), found the end of the command line")
            }
            return arguments[i]
        }
        while i < arguments.count {
            let arg = arguments[i]
            defer { i += 1 }
            switch arg {
            case "--check-config": command.checkConfig = true; continue
            case "--version": command.version = true; continue
            default: break
            }
            if arg.hasPrefix("--") {
                let body = arg.dropFirst(2)
                let name = String(body.prefix { $0 != "=" })
                let inline = body.contains("=") ? String(body.drop { $0 != "=" }.dropFirst()) : nil
                if let setting = Setting.named(name) {
                    if case .toggle = setting.kind {
                        guard inline == nil else { throw SettingsProblem("--\(name) takes no value; found \"\(arg)\"") }
                        values.append(Value(setting: setting, value: "true"))
                    } else {
                        values.append(Value(setting: setting, value: try value(for: setting, flag: "--\(name)", inline: inline)))
                    }
                    continue
                }
                if name.hasPrefix("no-"), let setting = Setting.named(String(name.dropFirst(3))),
                   case .toggle(invertible: true) = setting.kind, inline == nil {
                    values.append(Value(setting: setting, value: "false"))
                    continue
                }
                throw SettingsProblem("unknown option --\(name)\(suggestion(for: name)); expected one of the flags of srv --help")
            }
            if arg.hasPrefix("-"), arg.count >= 2, let c = arg.dropFirst().first, let setting = Setting.short(c) {
                let rest = String(arg.dropFirst(2))
                let inline = rest.isEmpty ? nil : (rest.hasPrefix("=") ? String(rest.dropFirst()) : rest)
                values.append(Value(setting: setting, value: try value(for: setting, flag: "-\(c)", inline: inline)))
                continue
            }
            if arg.hasPrefix("-") && arg.count > 1 {
                throw SettingsProblem("unknown option \(arg); expected one of the flags of srv --help")
            }
            throw SettingsProblem("unexpected argument \"\(arg)\"; the application is given with --app \(arg.hasSuffix(".so") ? arg : "FILE.so") (or --mount, --apps-dir)")
        }
        return values
    }

    /// " (did you mean --X?)" for a near miss of a setting's name.
    private static func suggestion(for name: String) -> String {
        Setting.nearest(to: name).map { " (did you mean --\($0)?)" } ?? ""
    }

    /// Applies one source's values in order; a repeated setting's first value in the source
    /// starts its list over (unless it accumulates). `place` names the source in errors.
    static func apply(_ values: [Value], to settings: inout Settings, fromCommandLine: Bool = true,
                      place: (Int) -> String) throws {
        var seen = Set<String>()
        for (i, v) in values.enumerated() {
            do {
                try v.setting.read(&settings, v.value, seen.insert(v.setting.name).inserted)
            } catch {
                throw SettingsProblem("\(place(i)): \(error)", aboutCommandLine: fromCommandLine)
            }
        }
    }

    /// The settings from every source, checked, relative paths made absolute.
    /// - Parameters:
    ///   - flags: the command line's setting values (`parseFlags`).
    ///   - environment: the process's environment (SRV_CMD_ARGS).
    public static func resolve(flags: [Value], environment: [String: String]) throws -> Settings {
        var (settings, fileLines) = try layered(flags: flags, environment: environment)
        var problems = settings.validate() + settings.resolveIdentity()
        var inFile = 0
        if let path = settings.configFile {
            // A problem with a value the file set names the file's line.
            problems = problems.map { problem in
                let name = String(problem.prefix { $0 != ":" && $0 != " " })
                guard let line = fileLines[name] else { return problem }
                inFile += 1
                return "\(problem) (config file \(path) line \(line))"
            }
        }
        if !problems.isEmpty {
            throw SettingsProblem(problems.joined(separator: "\n"), aboutCommandLine: inFile < problems.count)
        }
        return settings
    }

    /// The sources layered, before the checks (the unit tests compare sources with it).
    static func resolveUnchecked(flags: [Value], environment: [String: String]) throws -> Settings {
        try layered(flags: flags, environment: environment).settings
    }

    /// The sources layered, and the config file's line of each setting it still decides.
    private static func layered(flags: [Value], environment: [String: String]) throws
        -> (settings: Settings, fileLines: [String: Int]) {
        var settings = Settings()
        var envValues: [Value] = []
        if let text = environment["SRV_CMD_ARGS"], !text.isEmpty {
            var command = CommandFlags()
            do { envValues = try parseFlags(try ShellWords.split(text), command: &command) } catch {
                throw SettingsProblem("SRV_CMD_ARGS: \(error)")
            }
            if command.help || command.version || command.checkConfig {
                throw SettingsProblem("SRV_CMD_ARGS: expected settings only, found --help, --version or --check-config; give those on the command line")
            }
        }
        // -c on the command line wins over one in SRV_CMD_ARGS.
        let configPath = (envValues + flags).last { $0.setting.name == "config" }?.value
        var fileLines: [String: Int] = [:]
        if let path = configPath {
            guard let text = TextFile.read(path) else {
                throw SettingsProblem("config file \(path): cannot read it (does it exist?)", aboutCommandLine: false)
            }
            let lines: [ConfigFile.Line]
            do { lines = try ConfigFile.lines(from: text, path: path) } catch {
                throw SettingsProblem("config file \(error)", aboutCommandLine: false)
            }
            try apply(lines.map { Value(setting: $0.setting, value: $0.value) }, to: &settings, fromCommandLine: false) {
                "config file \(path) line \(lines[$0].number): \(lines[$0].setting.name)"
            }
            for line in lines { fileLines[line.setting.name] = line.number }
        }
        try apply(envValues, to: &settings) { "SRV_CMD_ARGS: --\(envValues[$0].setting.name)" }
        try apply(flags, to: &settings) { "--\(flags[$0].setting.name)" }
        // A value the environment or a flag gave is not the file's to answer for.
        for v in envValues + flags { fileLines[v.setting.name] = nil }
        // Relative paths are resolved now (from --chdir when given): workers and HUPs may run elsewhere.
        settings.chdir = settings.chdir.map { absolute($0) }
        let base = settings.chdir
        settings.mounts = settings.mounts.map { Settings.Mount(prefix: $0.prefix, path: absolute($0.path, from: base)) }
        settings.appsDir = settings.appsDir.map { absolute($0, from: base) }
        return (settings, fileLines)
    }

    static func absolute(_ path: String, from base: String? = nil) -> String {
        path.hasPrefix("/") ? path : (base ?? FileManager.default.currentDirectoryPath) + "/" + path
    }

    // MARK: - Help

    /// The OPTIONS section of `srv --help`: every setting with its flags, value, help and
    /// default, then the command's own flags.
    public static func optionsHelp(width: Int = 80) -> String {
        var rows: [(String, String)] = Setting.all.map { s in
            var flags = (s.short.map { "-\($0), " } ?? "") + "--\(s.name)"
            switch s.kind {
            case .toggle(let invertible): if invertible { flags += "/--no-\(s.name)" }
            default: flags += " <\(s.valueName)>"
            }
            var help = s.help
            if let d = s.defaultText {
                let shown = "(default \(d))"
                help = help.hasSuffix(".") ? String(help.dropLast()) + " \(shown)." : help + " " + shown
            }
            return (flags, help)
        }
        rows += [
            ("--check-config", "Validate the configuration and every application (as `srv check` does), then exit."),
            ("--version", "Show the version."),
            ("-h, --help", "Show help information."),
        ]
        let column = 26
        var out = ""
        for (flags, help) in rows {
            var lines = wrap(help, width: width - column)
            let first = "  " + flags
            if first.count < column - 1 {
                out += first.padded(column) + lines.removeFirst() + "\n"
            } else {
                out += first + "\n"
            }
            for line in lines { out += String(repeating: " ", count: column) + line + "\n" }
        }
        return out
    }

    private static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        if !line.isEmpty || lines.isEmpty { lines.append(line) }
        return lines
    }
}
