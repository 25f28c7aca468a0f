/// One setting of srv, declared once, as Gunicorn's config.py declares its settings: its
/// name (the long flag, and the config file's key), the value it takes, its help, how a
/// value is read into `Settings`, and what a valid value is. Its default is the initial value
/// of its `Settings` property, and `srv --help` shows it from there. The flags, SRV_CMD_ARGS,
/// the config file, the help text and the checks all come from `Setting.all`.
public struct Setting {
    public enum Kind {
        /// `--name VALUE`; the last one given wins.
        case value
        /// `--name VALUE`, repeatable: the values of one source (the file, SRV_CMD_ARGS,
        /// the flags) replace those of a weaker one, or add to them (`accumulates`).
        case repeated
        /// `--name` sets it, `--no-name` clears it when `invertible`; `name = true|false`
        /// in the config file.
        case toggle(invertible: Bool)
    }

    public let name: String
    public let short: Character?
    public let kind: Kind
    /// What the value is, in help: `<N>`, `<FILE.so>`.
    public let valueName: String
    public let help: String
    /// The default as help shows it, or nil when the help text says it (or there is none).
    public let defaultText: String?
    /// A config file may set it (`-c` itself may not).
    public let inConfigFile: Bool
    /// Reads `value` into the settings; `first`: the first value of this setting in its
    /// source (a repeated setting starts over from it). Throws `SettingsProblem`.
    let read: (_ settings: inout Settings, _ value: String, _ first: Bool) throws -> Void
    /// What is wrong with the setting's value in `settings` (each bad value of a list).
    let check: (Settings) -> [String]

    /// The setting called `name` (a long flag or config key, dashes or underscores).
    public static func named(_ name: String) -> Setting? {
        byName[name.replacingUnderscores()]
    }

    /// The setting of a short flag (`w` for `-w`).
    public static func short(_ c: Character) -> Setting? { all.first { $0.short == c } }

    private static let byName: [String: Setting] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    /// The problem of each setting's value in `settings`.
    static func problems(in settings: Settings) -> [String] {
        all.flatMap { $0.check(settings) }
    }
}

/// A setting srv cannot use, said once: what was expected, what was found, and where.
public struct SettingsProblem: Error, CustomStringConvertible {
    public let description: String
    /// The command line was wrong (then its usage helps), not a file it named.
    public let aboutCommandLine: Bool
    public init(_ description: String, aboutCommandLine: Bool = true) {
        self.description = description
        self.aboutCommandLine = aboutCommandLine
    }
}

extension Setting {
    /// The setting whose name `name` most likely misspells, if any is near enough.
    static func nearest(to name: String) -> String? {
        let near = all.map { ($0.name, distance($0.name, name)) }.min { $0.1 < $1.1 }
        guard let (best, d) = near, d <= max(2, name.count / 4) else { return nil }
        return best
    }

    /// Levenshtein distance.
    private static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in stride(from: 1, through: a.count, by: 1) {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}

// MARK: - Kinds of value

extension Setting {
    /// A number: an integer, or seconds (a Double).
    static func number<T: LosslessStringConvertible & Comparable>(
        _ name: String, short: Character? = nil, _ key: WritableKeyPath<Settings, T>, valueName: String,
        help: String, expected: String, valid: @escaping (T) -> Bool, showDefault: Bool = true
    ) -> Setting {
        Setting(name: name, short: short, kind: .value, valueName: valueName, help: help,
                defaultText: showDefault ? Self.text(Settings()[keyPath: key]) : nil, inConfigFile: true,
                read: { s, value, _ in
                    guard let v = T(value.trimmingSpaces) else {
                        throw SettingsProblem("expected \(T.self == Double.self ? "a number of seconds" : "an integer"), found \"\(value)\"")
                    }
                    s[keyPath: key] = v
                },
                check: { s in valid(s[keyPath: key]) ? [] : ["\(name): expected \(expected), found \(Self.text(s[keyPath: key]))"] })
    }

    /// A string, optional or with a default.
    static func text(_ name: String, short: Character? = nil, _ key: WritableKeyPath<Settings, String?>,
                     valueName: String, help: String) -> Setting {
        Setting(name: name, short: short, kind: .value, valueName: valueName, help: help, defaultText: nil,
                inConfigFile: true, read: { s, value, _ in s[keyPath: key] = value }, check: { _ in [] })
    }

    static func text(_ name: String, short: Character? = nil, _ key: WritableKeyPath<Settings, String>,
                     valueName: String, help: String, check: @escaping (Settings) -> [String] = { _ in [] }) -> Setting {
        Setting(name: name, short: short, kind: .value, valueName: valueName, help: help,
                defaultText: Settings()[keyPath: key], inConfigFile: true,
                read: { s, value, _ in s[keyPath: key] = value }, check: check)
    }

    /// A switch; `invertible`: its default is srv's to decide, and `--no-NAME` says no.
    static func toggle(_ name: String, _ key: WritableKeyPath<Settings, Bool?>, help: String) -> Setting {
        toggle(name, invertible: true, help: help) { $0[keyPath: key] = $1 }
    }

    static func toggle(_ name: String, _ key: WritableKeyPath<Settings, Bool>, help: String) -> Setting {
        toggle(name, invertible: false, help: help) { $0[keyPath: key] = $1 }
    }

    private static func toggle(_ name: String, invertible: Bool, help: String,
                               set: @escaping (inout Settings, Bool) -> Void) -> Setting {
        Setting(name: name, short: nil, kind: .toggle(invertible: invertible), valueName: "", help: help,
                defaultText: nil, inConfigFile: true,
                read: { s, value, _ in set(&s, try Self.boolean(value)) }, check: { _ in [] })
    }

    /// A list whose values of a stronger source replace a weaker one's.
    static func list(_ name: String, short: Character? = nil, _ key: WritableKeyPath<Settings, [String]>,
                     valueName: String, help: String, accumulates: Bool = false,
                     check: @escaping (Settings) -> [String] = { _ in [] }) -> Setting {
        Setting(name: name, short: short, kind: .repeated, valueName: valueName, help: help, defaultText: nil,
                inConfigFile: true,
                read: { s, value, first in
                    if first && !accumulates { s[keyPath: key] = [] }
                    s[keyPath: key].append(value)
                }, check: check)
    }

    static func boolean(_ value: String) throws -> Bool {
        switch value.trimmingSpaces.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw SettingsProblem("expected true or false, found \"\(value)\"")
        }
    }

    /// A default as help shows it: 2.0 as 2.
    static func text<T>(_ value: T) -> String {
        if let d = value as? Double, d == d.rounded(), abs(d) < 1e15 { return String(Int(d)) }
        return "\(value)"
    }
}
