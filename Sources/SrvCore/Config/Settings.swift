import Glibc

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
    /// Load plugins that users other than srv's and root may write (PathTrust).
    public var insecurePlugins = false
    /// One SO_REUSEPORT listening socket per worker (Gunicorn's --reuse-port). Off by
    /// default: a retiring or crashing worker's own queue dies with its socket, so a reload
    /// could reset connections (unless the kernel migrates them, net.ipv4.tcp_migrate_req).
    public var reusePort: Bool?

    /// Whether the TCP listeners srv opens give each worker a socket of its own.
    public var effectiveReusePort: Bool { reusePort ?? false }
    public var workers = 1
    public var threads = 0
    public var keepAlive = 2.0
    /// The longest pause between two reads of a request body (nginx's client_body_timeout).
    public var bodyTimeout = 60.0
    /// The longest a response may wait for the client to take a byte (nginx's
    /// send_timeout): then srv drops the connection, and a thread blocked writing to it
    /// comes back.
    public var sendTimeout = 60.0
    /// Where the master serves /metrics (Prometheus text format): HOST:PORT or unix:PATH.
    public var metricsBind: String?
    public var limitRequestLine = 4094
    public var limitRequestFields = 100
    public var limitRequestFieldSize = 8190
    public var limitRequestBody = 64 << 20
    public var bodyMemoryLimit = 1 << 20
    public var spoolDirectory = "/tmp"
    /// Loopback and Unix-socket peers: a proxy on the same machine (nginx) is trusted.
    public var forwardedAllowIPs = try! AddressList(["127.0.0.1", "::1", "unix"])
    public var proxyProtocol = false
    public var proxyAllowFrom = try! AddressList(["127.0.0.1", "::1"])
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
    /// The status file's directory (RuntimeDirectory.defaultPath unless set).
    public var runtimeDirectory: String?
    /// The user and group workers run as (names or numbers); nil: srv's own.
    public var user: String?
    public var group: String?
    /// Resolved from `user` and `group` by `resolveIdentity()`.
    public var workerUID: UInt32?
    public var workerGID: UInt32?
    /// The directory srv changes to before loading applications.
    public var chdir: String?
    /// KEY=VALUE pairs added to the workers' environment.
    public var environment: [String] = []
    /// The mode mask for Unix socket files srv creates (Gunicorn's -m/--umask; 0: rwx for all).
    public var umask = 0
    public var reload = false
    public var reloadDelay = 1.0
    public var statusFile: String?
    public var configFile: String?

    public init() {}

    public static let defaultBind = "127.0.0.1:8000"

    /// The binds to listen on (the default when none is given).
    public var effectiveBinds: [String] { binds.isEmpty ? [Settings.defaultBind] : binds }

    /// Problems that make the settings unusable, each saying what was expected: every
    /// setting's own check (Setting.all), and that there is an application to serve.
    public func validate() -> [String] {
        var problems: [String] = []
        if mounts.isEmpty && appsDir == nil {
            problems.append("no application: expected --app PATH.so, --mount /PATH=FILE.so or --apps-dir DIR")
        }
        return problems + Setting.problems(in: self)
    }

    /// Why a log file cannot be opened for appending (nil when it can), without creating it.
    static func appendable(_ path: String) -> String? {
        if access(path, F_OK) == 0 {
            return access(path, W_OK) == 0 ? nil : "cannot write to it (\(String(cString: strerror(errno)))); check its owner and mode"
        }
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        if access(dir, F_OK) != 0 { return "its directory \(dir) does not exist; create it first" }
        return access(dir, W_OK | X_OK) == 0 ? nil : "cannot create it in \(dir) (\(String(cString: strerror(errno)))); check that directory's owner and mode"
    }

    /// Resolves `user` and `group` to ids (names through the system's user database).
    /// Returns the problems: an unknown name, or dropping privileges without being root.
    public mutating func resolveIdentity() -> [String] {
        var problems: [String] = []
        workerUID = nil
        workerGID = nil
        if let u = user {
            if let pw = Identity.user(u) {
                workerUID = pw.uid
                workerGID = pw.gid
            } else {
                problems.append("user \"\(u)\": no such user; expected a user name or a numeric uid from /etc/passwd")
            }
        }
        if let g = group {
            if let gid = Identity.group(g) { workerGID = gid } else {
                problems.append("group \"\(g)\": no such group; expected a group name or a numeric gid from /etc/group")
            }
        }
        if (workerUID != nil && workerUID != geteuid()) || (workerGID != nil && workerGID != getegid()), geteuid() != 0 {
            problems.append("user/group: switching the workers to \(user ?? "") \(group ?? "") needs root; srv runs as uid \(geteuid()). Start srv as root (it binds, then the workers drop to --user), or leave --user and --group out")
        }
        return problems
    }
}
