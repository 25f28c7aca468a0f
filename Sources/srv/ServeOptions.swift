import ArgumentParser
import SrvCore

/// The settings as flags. Every option is optional so that flags, SRV_CMD_ARGS and the
/// config file can be layered: a flag overrides the environment, which overrides the file.
struct ServeOptions: ParsableArguments {
    @Option(name: .customLong("app"), help: ArgumentHelp("Serve this application (a .so) at /.", valueName: "FILE.so"))
    var app: String?
    @Option(name: .customLong("mount"), help: ArgumentHelp("Mount an application at a path prefix; repeatable.", valueName: "/PATH=FILE.so"))
    var mount: [String] = []
    @Option(name: .customLong("apps-dir"), help: ArgumentHelp("Mount every lib<name>.so in DIR at /<name>.", valueName: "DIR"))
    var appsDir: String?
    @Option(name: [.customShort("b"), .customLong("bind")], help: ArgumentHelp("Listen on HOST:PORT, [IPv6]:PORT or unix:PATH; repeatable. Default 127.0.0.1:8000.", valueName: "ADDRESS"))
    var bind: [String] = []
    @Option(name: .customLong("backlog"), help: "The listen backlog (default 2048).")
    var backlog: Int?
    @Flag(name: .customLong("reuse-port"), inversion: .prefixedNo,
          help: "Give each worker a TCP listening socket of its own (SO_REUSEPORT): the kernel spreads new connections evenly; but a worker that retires (a reload) or dies loses the connections waiting in its queue unless net.ipv4.tcp_migrate_req=1. Off by default.")
    var reusePort: Bool?
    @Option(name: [.customShort("w"), .customLong("workers")], help: "Number of worker processes (default 1).")
    var workers: Int?
    @Option(name: .customLong("threads"), help: "Run applications that declare SRV_FLAG_THREAD_SAFE on N threads per worker; others stay on the event loop. Default 0: every app inline on the event loop.")
    var threads: Int?
    @Option(name: .customLong("keep-alive"), help: "Seconds to keep an idle connection open (default 2).")
    var keepAlive: Double?
    @Option(name: .customLong("body-timeout"), help: "Seconds a request body may pause between bytes before srv answers 408 (nginx's client_body_timeout; default 60).")
    var bodyTimeout: Double?
    @Option(name: .customLong("metrics-bind"), help: ArgumentHelp("Serve Prometheus metrics of the whole server (every worker and generation) at http://ADDR/metrics, from the master; HOST:PORT or unix:PATH, not one of the --bind addresses.", valueName: "ADDR"))
    var metricsBind: String?
    @Option(name: .customLong("send-timeout"), help: "Seconds a response may wait for the client to take a byte before srv drops the connection (nginx's send_timeout; default 60).")
    var sendTimeout: Double?
    @Option(name: .customLong("limit-request-line"), help: "Maximum request line size in bytes, 0 for unlimited (default 4094).")
    var limitRequestLine: Int?
    @Option(name: .customLong("limit-request-fields"), help: "Maximum number of header fields (default 100).")
    var limitRequestFields: Int?
    @Option(name: .customLong("limit-request-field-size"), help: "Maximum size of one header field in bytes (default 8190).")
    var limitRequestFieldSize: Int?
    @Option(name: .customLong("limit-request-body"), help: "Maximum request body in bytes (default 67108864); larger gets 413.")
    var limitRequestBody: Int?
    @Option(name: .customLong("body-memory-limit"), help: "Request bodies above this many bytes are spooled to a temporary file (default 1048576).")
    var bodyMemoryLimit: Int?
    @Option(name: .customLong("spool-dir"), help: "Directory for spooled request bodies (default /tmp).")
    var spoolDir: String?
    @Option(name: .customLong("forwarded-allow-ips"), help: "Comma-separated peers trusted to set X-Forwarded-For/-Proto: addresses, CIDR ranges (10.0.0.0/8), 'unix' (peers on a Unix socket, such as nginx), '*' for all (default 127.0.0.1,::1,unix).")
    var forwardedAllowIPs: String?
    @Flag(name: .customLong("proxy-protocol"), help: "Expect a PROXY protocol (v1 or v2) header on each connection.")
    var proxyProtocol = false
    @Option(name: .customLong("proxy-allow-from"), help: "Comma-separated peers allowed to send PROXY headers, in the form of --forwarded-allow-ips (default 127.0.0.1,::1).")
    var proxyAllowFrom: String?
    @Option(name: .customLong("access-logfile"), help: "Write an access log to FILE ('-' for stderr). Off by default.")
    var accessLogfile: String?
    @Option(name: .customLong("access-logformat"), help: "Access log format with Gunicorn's atoms, plus %(id)s for srv.request_id (default: combined, then the request id).")
    var accessLogformat: String?
    @Option(name: .customLong("error-logfile"), help: "Error log file ('-' for stderr, the default).")
    var errorLogfile: String?
    @Option(name: .customLong("log-level"), help: "debug, info, warning, error or critical (default info).")
    var logLevel: String?
    @Option(name: .customLong("pid"), help: "Write the master's pid to FILE.")
    var pid: String?
    @Option(name: [.customShort("t"), .customLong("timeout")], help: "Kill a worker stuck in one request (or silent) this many seconds (default 30).")
    var timeout: Double?
    @Option(name: .customLong("graceful-timeout"), help: "Seconds a stopping worker may finish its requests (default 30).")
    var gracefulTimeout: Double?
    @Option(name: .customLong("boot-timeout"), help: "Seconds a new worker may take to load its applications (default 30).")
    var bootTimeout: Double?
    @Option(name: .customLong("max-requests"), help: "Replace a worker after this many requests, 0 to never (default 0).")
    var maxRequests: Int?
    @Option(name: .customLong("max-requests-jitter"), help: "Add a random 0...N to --max-requests per worker.")
    var maxRequestsJitter: Int?
    @Option(name: .customLong("snapshot-dir"), help: "Where private snapshots of applications are kept (default: snapshots in the runtime directory); owned by srv's user, mode 0700.")
    var snapshotDir: String?
    @Option(name: .customLong("runtime-dir"), help: "The status file and snapshots (default $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/srv, else /tmp/srv-UID).")
    var runtimeDir: String?
    @Option(name: [.customShort("u"), .customLong("user")], help: "Run the workers as this user (name or uid); srv must start as root, which binds first.")
    var user: String?
    @Option(name: [.customShort("g"), .customLong("group")], help: "Run the workers as this group (name or gid; default: the user's group).")
    var group: String?
    @Option(name: .customLong("chdir"), help: ArgumentHelp("Change to DIR before loading the applications; relative paths are taken from there.", valueName: "DIR"))
    var chdir: String?
    @Option(name: [.customShort("e"), .customLong("env")], help: ArgumentHelp("Set an environment variable for the workers; repeatable.", valueName: "KEY=VALUE"))
    var env: [String] = []
    @Option(name: [.customShort("m"), .customLong("umask")], help: ArgumentHelp("Mode mask (octal) for the Unix socket files srv creates (default 0: any local user may connect, as with a loopback port; 0o007 keeps the socket to srv's user and group).", valueName: "MASK"))
    var umask: String?
    @Flag(name: .customLong("reload"), help: "Reload when an application file changes (after it stops changing).")
    var reload = false
    @Option(name: .customLong("reload-delay"), help: "Seconds a changed file must stay unchanged before --reload acts (default 1).")
    var reloadDelay: Double?
    @Option(name: .customLong("status-file"), help: "Where the master writes its status for `srv status`.")
    var statusFile: String?
    @Option(name: [.customShort("c"), .customLong("config")], help: "Read settings from FILE (name = value lines, the long flag names).")
    var config: String?

    /// The long names a config file may use.
    static let settingNames: Set<String> = [
        "app", "mount", "apps-dir", "bind", "backlog", "reuse-port", "workers", "threads", "keep-alive", "body-timeout", "send-timeout", "metrics-bind", "limit-request-line",
        "limit-request-fields", "limit-request-field-size", "limit-request-body", "body-memory-limit", "spool-dir",
        "forwarded-allow-ips", "proxy-protocol", "proxy-allow-from", "access-logfile", "access-logformat",
        "error-logfile", "log-level", "pid", "timeout", "graceful-timeout", "boot-timeout", "max-requests",
        "max-requests-jitter", "snapshot-dir", "reload", "reload-delay", "status-file", "runtime-dir", "user",
        "group", "chdir", "env", "umask",
    ]

    /// Applies the options that are set onto `s`.
    func apply(to s: inout Settings) throws {
        if let app = app {
            s.mounts.removeAll { $0.prefix == "" }
            s.mounts.insert(Settings.Mount(prefix: "", path: app), at: 0)
        }
        for m in mount {
            guard let eq = m.firstIndex(of: "="), m.hasPrefix("/") else {
                throw ValidationError("--mount \(m): expected /PATH=FILE.so (for example /blog=./libblog.so)")
            }
            var prefix = String(m[..<eq])
            while prefix.hasSuffix("/") { prefix.removeLast() }
            let path = String(m[m.index(after: eq)...])
            s.mounts.removeAll { $0.prefix == prefix }
            s.mounts.append(Settings.Mount(prefix: prefix, path: path))
        }
        if let v = appsDir { s.appsDir = v }
        if !bind.isEmpty { s.binds = bind }
        if let v = backlog { s.backlog = v }
        if let v = reusePort { s.reusePort = v }
        if let v = workers { s.workers = v }
        if let v = threads { s.threads = v }
        if let v = keepAlive { s.keepAlive = v }
        if let v = bodyTimeout { s.bodyTimeout = v }
        if let v = sendTimeout { s.sendTimeout = v }
        if let v = metricsBind { s.metricsBind = v }
        if let v = limitRequestLine { s.limitRequestLine = v }
        if let v = limitRequestFields { s.limitRequestFields = v }
        if let v = limitRequestFieldSize { s.limitRequestFieldSize = v }
        if let v = limitRequestBody { s.limitRequestBody = v }
        if let v = bodyMemoryLimit { s.bodyMemoryLimit = v }
        if let v = spoolDir { s.spoolDirectory = v }
        if let v = forwardedAllowIPs { s.forwardedAllowIPs = try parsed { try AddressList(parsing: v) } }
        if proxyProtocol { s.proxyProtocol = true }
        if let v = proxyAllowFrom { s.proxyAllowFrom = try parsed { try AddressList(parsing: v, setting: "proxy-allow-from") } }
        if let v = accessLogfile { s.accessLogFile = v }
        if let v = accessLogformat { s.accessLogFormat = AccessLogFormat(v) }
        if let v = errorLogfile { s.errorLogFile = v }
        if let v = logLevel { s.logLevel = v.lowercased() }
        if let v = pid { s.pidFile = v }
        if let v = timeout { s.timeout = v }
        if let v = gracefulTimeout { s.gracefulTimeout = v }
        if let v = bootTimeout { s.bootTimeout = v }
        if let v = maxRequests { s.maxRequests = v }
        if let v = maxRequestsJitter { s.maxRequestsJitter = v }
        if let v = snapshotDir { s.snapshotDirectory = v }
        if reload { s.reload = true }
        if let v = reloadDelay { s.reloadDelay = v }
        if let v = statusFile { s.statusFile = v }
        if let v = runtimeDir { s.runtimeDirectory = v }
        if let v = user { s.user = v }
        if let v = group { s.group = v }
        if let v = chdir { s.chdir = v }
        if !env.isEmpty { s.environment += env }
        if let v = umask {
            var digits = Substring(v)
            if digits.hasPrefix("0o") { digits = digits.dropFirst(2) }
            guard let mask = Int(digits, radix: 8) else {
                throw ValidationError("umask \"\(v)\": expected an octal mode mask such as 0, 007 or 0o077")
            }
            s.umask = mask
        }
    }

    private func parsed<T>(_ make: () throws -> T) throws -> T {
        do { return try make() } catch { throw ValidationError("\(error)") }
    }

    /// Gunicorn's underscore spellings of long flags (`--limit-request-field_size`) as the
    /// dashed ones srv declares; values are left alone.
    static func normalizingUnderscores(_ arguments: [String]) -> [String] {
        arguments.map { arg in
            guard arg.hasPrefix("--"), arg.contains("_") else { return arg }
            let name = arg.prefix { $0 != "=" }
            return name.replacingOccurrences(of: "_", with: "-") + arg.dropFirst(name.count)
        }
    }
}

/// Settings from, in rising precedence: defaults, the config file, SRV_CMD_ARGS, the flags.
func resolveSettings(commandLine: ServeOptions, environment: [String: String]) throws -> Settings {
    var settings = Settings()
    var envOptions: ServeOptions?
    var fileLines: [String: Int] = [:]
    if let text = environment["SRV_CMD_ARGS"], !text.isEmpty {
        do {
            envOptions = try ServeOptions.parse(ServeOptions.normalizingUnderscores(try ShellWords.split(text)))
        } catch {
            throw ValidationError("SRV_CMD_ARGS: \(ServeOptions.message(for: error))")
        }
    }
    if let path = commandLine.config ?? envOptions?.config {
        guard let data = FileManagerShim.read(path) else {
            throw ValidationError("config file \(path): cannot read it (does it exist?)")
        }
        let lines: [ConfigFile.Line]
        do { lines = try ConfigFile.lines(from: data, path: path, knownNames: ServeOptions.settingNames) } catch {
            throw ValidationError("config file \(error)")
        }
        // Each line on its own first, so that a bad value names its line.
        for line in lines {
            var scratch = Settings()
            do { try ServeOptions.parse(line.arguments).apply(to: &scratch) } catch {
                throw ValidationError("config file \(path) line \(line.number): \(ServeOptions.message(for: error))")
            }
            fileLines[line.name] = line.number
        }
        let fileOptions = try ServeOptions.parse(lines.flatMap { $0.arguments })
        try fileOptions.apply(to: &settings)
        settings.configFile = path
    }
    try envOptions?.apply(to: &settings)
    try commandLine.apply(to: &settings)
    // Relative paths are resolved now (from --chdir when given): workers and HUPs may run elsewhere.
    settings.chdir = settings.chdir.map { FileManagerShim.absolute($0) }
    let base = settings.chdir
    settings.mounts = settings.mounts.map { Settings.Mount(prefix: $0.prefix, path: FileManagerShim.absolute($0.path, from: base)) }
    settings.appsDir = settings.appsDir.map { FileManagerShim.absolute($0, from: base) }
    var problems = settings.validate() + settings.resolveIdentity()
    if let path = settings.configFile {
        // A problem with a value the file set names the file's line.
        problems = problems.map { problem in
            let name = String(problem.prefix { $0 != ":" && $0 != " " })
            guard let line = fileLines[name] else { return problem }
            return "\(problem) (config file \(path) line \(line))"
        }
    }
    if !problems.isEmpty { throw ValidationError(problems.joined(separator: "\n")) }
    return settings
}
