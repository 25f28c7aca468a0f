/// The config file (`-c FILE`): one `name = value` per line, with the flags' long names
/// (`workers = 4`, `bind = 127.0.0.1:8000`, `app = ./libblog.so`). A setting that takes
/// several values is repeated. `#` starts a comment. It becomes flag arguments, so the
/// file and the flags can never disagree on what a setting means.
public enum ConfigFile {
    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Names that are switches: `reload = true` becomes `--reload`, `false` omits it.
    public static let switches: Set<String> = ["reload", "proxy-protocol", "reuse-port"]
    /// Switches whose default is decided by srv: `false` becomes `--no-NAME`.
    static let invertible: Set<String> = ["reuse-port"]

    /// One setting of the file: its line number, its name and the flag arguments it becomes.
    public struct Line {
        public let number: Int
        public let name: String
        public let arguments: [String]
    }

    public static func arguments(from text: String, path: String, knownNames: Set<String>) throws -> [String] {
        try lines(from: text, path: path, knownNames: knownNames).flatMap { $0.arguments }
    }

    public static func lines(from text: String, path: String, knownNames: Set<String>) throws -> [Line] {
        var result: [Line] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            if let hash = line.firstIndex(of: "#"), !line[..<hash].contains("\"") { line = line[..<hash] }
            let trimmed = line.trimmingSpaces
            if trimmed.isEmpty { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw ParseError(description: "\(path) line \(index + 1): expected `name = value`, found \"\(trimmed.prefix(60))\"")
            }
            let name = String(trimmed[..<eq]).trimmingSpaces.replacingUnderscores()
            var value = String(trimmed[trimmed.index(after: eq)...]).trimmingSpaces
            if value.count >= 2, (value.hasPrefix("\"") && value.hasSuffix("\"")) || (value.hasPrefix("'") && value.hasSuffix("'")) {
                value = String(value.dropFirst().dropLast())
            }
            guard knownNames.contains(name) else {
                throw ParseError(description: "\(path) line \(index + 1): unknown setting \"\(name)\"; expected one of the long flag names of `srv --help` (for example workers, bind, app)")
            }
            var args: [String] = []
            if switches.contains(name) {
                switch value.lowercased() {
                case "true", "yes", "on", "1": args.append("--\(name)")
                case "false", "no", "off", "0": if invertible.contains(name) { args.append("--no-\(name)") }
                default: throw ParseError(description: "\(path) line \(index + 1): \(name) expects true or false, found \"\(value)\"")
                }
            } else {
                args.append("--\(name)")
                args.append(value)
            }
            result.append(Line(number: index + 1, name: name, arguments: args))
        }
        return result
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
        if quote != nil { throw ConfigFile.ParseError(description: "SRV_CMD_ARGS: unterminated quote") }
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
