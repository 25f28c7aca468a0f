/// Every setting of srv, with Gunicorn's names and defaults where Gunicorn has them.
/// The same settings come from flags, a config file (`-c`) and `SRV_CMD_ARGS`.
public struct Settings: Codable, Equatable {
    /// An application and where it is mounted ("" is "/").
    public struct Mount: Codable, Equatable {
        public var prefix: String
        public var path: String
        public init(prefix: String, path: String) { self.prefix = prefix; self.path = path }
    }

    public var mounts: [Mount] = []
    public var appsDir: String?
    public var binds: [String] = []
    public var backlog = 2048
    public var workers = 1
    public var threads = 0
    public var keepAlive = 2.0
    public var limitRequestLine = 4094
    public var limitRequestFields = 100
    public var limitRequestFieldSize = 8190
    public var limitRequestBody = 64 << 20
    public var bodyMemoryLimit = 1 << 20
    public var spoolDirectory = "/tmp"
    public var forwardedAllowIPs = AddressList(["127.0.0.1", "::1"])
    public var proxyProtocol = false
    public var proxyAllowFrom = AddressList(["127.0.0.1", "::1"])
    public var accessLogFile: String?
    public var accessLogFormat = AccessLogFormat.combined
    public var errorLogFile = "-"
    public var logLevel = "info"
    public var pidFile: String?
    public var timeout = 30.0
    public var gracefulTimeout = 30.0
    public var bootTimeout = 30.0
    public var maxRequests = 0
    public var maxRequestsJitter = 0
    public var snapshotDirectory = Snapshot.defaultDirectory
    public var reload = false
    public var reloadDelay = 1.0
    public var statusFile: String?
    public var configFile: String?

    public init() {}

    public static let defaultBind = "127.0.0.1:8000"

    /// The binds to listen on (the default when none is given).
    public var effectiveBinds: [String] { binds.isEmpty ? [Settings.defaultBind] : binds }

    /// Problems that make the settings unusable, each saying what was expected.
    public func validate() -> [String] {
        var problems: [String] = []
        if mounts.isEmpty && appsDir == nil {
            problems.append("no application: expected --app PATH.so, --mount /PATH=FILE.so or --apps-dir DIR")
        }
        if workers < 1 { problems.append("workers: expected at least 1, found \(workers)") }
        if threads < 0 { problems.append("threads: expected 0 (inline) or more, found \(threads)") }
        if keepAlive < 0 { problems.append("keep-alive: expected seconds >= 0, found \(keepAlive)") }
        if limitRequestLine < 0 || limitRequestLine > 8190 {
            problems.append("limit-request-line: expected 0 (unlimited) to 8190, found \(limitRequestLine)")
        }
        if limitRequestFields < 0 || limitRequestFields > 32768 {
            problems.append("limit-request-fields: expected 0 to 32768, found \(limitRequestFields)")
        }
        if limitRequestFieldSize < 0 { problems.append("limit-request-field-size: expected >= 0, found \(limitRequestFieldSize)") }
        if limitRequestBody < 0 { problems.append("limit-request-body: expected >= 0 bytes, found \(limitRequestBody)") }
        if timeout <= 0 { problems.append("timeout: expected seconds > 0, found \(timeout)") }
        if gracefulTimeout < 0 { problems.append("graceful-timeout: expected seconds >= 0, found \(gracefulTimeout)") }
        if backlog < 1 { problems.append("backlog: expected at least 1, found \(backlog)") }
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(logLevel) {
            problems.append("log-level: expected one of debug, info, warning, error, critical, found \"\(logLevel)\"")
        }
        var prefixes = Set<String>()
        for m in mounts {
            if !prefixes.insert(m.prefix).inserted { problems.append("mount \(m.prefix.isEmpty ? "/" : m.prefix) is given twice") }
        }
        for b in effectiveBinds {
            if case .failure(let e) = BindAddress.parse(b) { problems.append(e.description) }
        }
        return problems
    }
}
