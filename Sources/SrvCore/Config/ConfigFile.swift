#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The config file (`-c FILE`): one `name = value` per line, with the flags' long names
/// (`workers = 4`, `bind = 127.0.0.1:8000`, `app = ./libblog.so`). A setting that takes
/// several values is repeated; a switch takes true or false. `#` starts a comment. Each
/// name is a `Setting` of `Setting.all`, read exactly as its flag is.
public enum ConfigFile {
    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// One setting of the file: its line number, the setting and its value as written.
    public struct Line {
        public let number: Int
        public let setting: Setting
        public let value: String
    }

    public static func lines(from text: String, path: String) throws -> [Line] {
        var result: [Line] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            if let hash = line.firstIndex(of: "#"), !line[..<hash].contains("\"") { line = line[..<hash] }
            let trimmed = line.trimmingSpaces
            if trimmed.isEmpty { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw ParseError(description: "\(path) line \(index + 1): expected `name = value`, found \"\(trimmed.prefix(60))\"")
            }
            let name = String(trimmed[..<eq]).trimmingSpaces
            var value = String(trimmed[trimmed.index(after: eq)...]).trimmingSpaces
            if value.count >= 2, (value.hasPrefix("\"") && value.hasSuffix("\"")) || (value.hasPrefix("'") && value.hasSuffix("'")) {
                value = String(value.dropFirst().dropLast())
            }
            guard let setting = Setting.named(name), setting.inConfigFile else {
                let near = Setting.nearest(to: name).map { " (did you mean \($0)?)" } ?? ""
                throw ParseError(description: "\(path) line \(index + 1): unknown setting \"\(name)\"\(near); expected one of the long flag names of `srv --help` (for example workers, bind, app)")
            }
            result.append(Line(number: index + 1, setting: setting, value: value))
        }
        return result
    }
}

/// A text file's contents (UTF-8), or nil when it cannot be read.
public enum TextFile {
    public static func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Splits SRV_CMD_ARGS like a shell would (spaces, single and double quotes, backslash).
public enum ShellWords {
    public static func split(_ text: String) throws -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var quote: Character?
        var escape = false
        for c in text {
            if escape { current.append(c); escape = false; inWord = true; continue }
            if let q = quote {
                if c == q { quote = nil } else if c == "\\" && q == "\"" { escape = true } else { current.append(c) }
                continue
            }
            switch c {
            case "\\": escape = true
            case "\"", "'": quote = c; inWord = true
            case " ", "\t", "\n":
                if inWord { words.append(current); current = ""; inWord = false }
            default: current.append(c); inWord = true
            }
        }
        if quote != nil { throw ConfigFile.ParseError(description: "unterminated quote") }
        if inWord { words.append(current) }
        return words
    }
}

/// Produces the settings anew on each HUP (re-reading the config file).
public struct ConfigurationSource {
    public let load: () throws -> Settings
    public init(load: @escaping () throws -> Settings) { self.load = load }
}

extension String {
    func replacingUnderscores() -> String { String(map { $0 == "_" ? "-" : $0 }) }
}
