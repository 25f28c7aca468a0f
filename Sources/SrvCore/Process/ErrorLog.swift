import Glibc
import Logging

/// srv's error log in Gunicorn's line format, `[time] [pid] [LEVEL] message`, to stderr
/// or a file (--error-logfile); USR1 reopens the file after rotation.
public final class ErrorLog {
    public static let shared = ErrorLog()
    private var fd: Int32 = 2
    private var path = "-"
    private let lock = NSLockish()

    public func configure(path: String) throws {
        if path == "-" { lock.run { if fd > 2 { close(fd) }; fd = 2; self.path = path }; return }
        let fresh = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fresh < 0 { throw LogFileError(description: "cannot open the error log \(path): \(String(cString: strerror(errno)))") }
        lock.run { if fd > 2 { close(fd) }; fd = fresh; self.path = path }
    }

    public func reopen() { try? configure(path: path) }

    func write(_ line: String) {
        var line = line
        lock.run { _ = line.withUTF8 { Glibc.write(fd, $0.baseAddress, $0.count) } }
    }

    /// Makes a logger whose lines go here.
    public static func logger(label: String, level: Logger.Level) -> Logger {
        var logger = Logger(label: label) { _ in Handler() }
        logger.logLevel = level
        return logger
    }

    struct Handler: LogHandler {
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let level = event.level, message = event.message
            var now = time(nil)
            var tm = tm()
            localtime_r(&now, &tm)
            var buf = [CChar](repeating: 0, count: 48)
            strftime(&buf, 48, "%Y-%m-%d %H:%M:%S %z", &tm)
            let name: String
            switch level {
            case .trace: name = "TRACE"
            case .debug: name = "DEBUG"
            case .info: name = "INFO"
            case .notice: name = "NOTICE"
            case .warning: name = "WARNING"
            case .error: name = "ERROR"
            case .critical: name = "CRITICAL"
            }
            ErrorLog.shared.write("[\(String(cString: buf))] [\(getpid())] [\(name)] \(ErrorLog.escaped("\(message)"))\n")
        }
    }

    /// A message as one log line: control characters (CR and LF above all) become visible
    /// escapes, so that nothing a plugin or a client put in a status, a header or a path
    /// can start a forged line. Tabs stay.
    static func escaped(_ text: String) -> String {
        guard text.utf8.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7f }) else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x0a: out += "\\n"
            case 0x0d: out += "\\r"
            case 0x09: out.unicodeScalars.append(scalar)
            case 0..<0x20, 0x7f: out += "\\x" + String(format2: UInt8(scalar.value))
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

/// A pthread mutex; the error log is written from event-loop and application threads.
final class NSLockish {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    func run<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}

extension Logger.Level {
    public init(setting: String) {
        switch setting {
        case "trace": self = .trace
        case "debug": self = .debug
        case "notice": self = .notice
        case "warning": self = .warning
        case "error": self = .error
        case "critical": self = .critical
        default: self = .info
        }
    }
}
