import Glibc

extension Setting {
    /// Every setting of srv, in the order `srv --help` lists them.
    public static let all: [Setting] = [
        // MARK: Applications
        Setting(name: "app", short: nil, kind: .value, valueName: "FILE.so", help: "Serve this application (a .so) at /.",
                defaultText: nil, inConfigFile: true,
                read: { s, value, _ in
                    s.mounts.removeAll { $0.prefix == "" }
                    s.mounts.insert(Settings.Mount(prefix: "", path: value), at: 0)
                }, check: { _ in [] }),
        Setting(name: "mount", short: nil, kind: .repeated, valueName: "/PATH=FILE.so",
                help: "Mount an application at a path prefix; repeatable.", defaultText: nil, inConfigFile: true,
                read: { s, value, _ in
                    guard let eq = value.firstIndex(of: "="), value.hasPrefix("/") else {
                        throw SettingsProblem("expected /PATH=FILE.so (for example /blog=./libblog.so), found \"\(value)\"")
                    }
                    var prefix = String(value[..<eq])
                    while prefix.hasSuffix("/") { prefix.removeLast() }
                    s.mounts.removeAll { $0.prefix == prefix }
                    s.mounts.append(Settings.Mount(prefix: prefix, path: String(value[value.index(after: eq)...])))
                }, check: { _ in [] }),
        .text("apps-dir", \.appsDir, valueName: "DIR", help: "Mount every lib<name>.so in DIR at /<name>.")
            .checked { s in
                guard let dir = s.appsDir else { return nil }
                var st = stat()
                if stat(dir, &st) != 0 {
                    return "apps-dir \(dir): \(String(cString: strerror(errno))); expected a directory of lib<name>.so files (create it, or fix the path)"
                }
                if (st.st_mode & S_IFMT) != S_IFDIR { return "apps-dir \(dir): expected a directory, found a file" }
                if access(dir, R_OK | X_OK) != 0 {
                    return "apps-dir \(dir): cannot read it (\(String(cString: strerror(errno)))); check its permissions"
                }
                if !s.insecurePlugins, let p = PathTrust.problem(dir) { return "apps-dir \(dir): \(p.explanation(of: dir))" }
                return nil
            },
        .toggle("insecure-plugins", \.insecurePlugins,
                help: "Load plugin files and apps directories that users other than srv's and root may write (or a directory above them). srv refuses them by default, as OpenSSH's StrictModes does."),

        // MARK: Listening
        .list("bind", short: "b", \.binds, valueName: "ADDRESS",
              help: "Listen on HOST:PORT, [IPv6]:PORT or unix:PATH; repeatable. A bare PORT is 127.0.0.1:PORT (this machine only); 0.0.0.0:PORT listens on every IPv4 address, [::]:PORT on every IPv6 one. Default \(Settings.defaultBind).",
              check: { s in
                  s.effectiveBinds.compactMap { b -> String? in
                      if case .failure(let e) = BindAddress.parse(b) { return e.description }
                      return nil
                  }
              }),
        .number("backlog", \.backlog, valueName: "N", help: "The listen backlog.", expected: "at least 1", valid: { $0 >= 1 }),
        .toggle("reuse-port", \.reusePort,
                help: "Give each worker a TCP listening socket of its own (SO_REUSEPORT): the kernel spreads new connections evenly; but a worker that retires (a reload) or dies loses the connections waiting in its queue unless net.ipv4.tcp_migrate_req=1. Off by default."),
        .number("workers", short: "w", \.workers, valueName: "N", help: "Number of worker processes.",
                expected: "at least 1", valid: { $0 >= 1 }),
        .number("threads", \.threads, valueName: "N",
                help: "Run applications that declare SRV_FLAG_THREAD_SAFE on N threads per worker; others stay on the event loop. Default 0: every app inline on the event loop.",
                expected: "0 (inline) or more", valid: { $0 >= 0 }, showDefault: false),

        // MARK: Connections
        .number("keep-alive", \.keepAlive, valueName: "SECONDS",
                help: "Seconds to keep an idle connection open between requests; 0: no keep-alive, every response closes its connection (Connection: close).",
                expected: "seconds >= 0", valid: { $0 >= 0 }),
        .number("body-timeout", \.bodyTimeout, valueName: "SECONDS",
                help: "Seconds a request body may pause between bytes before srv answers 408 (nginx's client_body_timeout).",
                expected: "seconds > 0", valid: { $0 > 0 }),
        .number("send-timeout", \.sendTimeout, valueName: "SECONDS",
                help: "Seconds a response may wait for the client to take a byte before srv drops the connection (nginx's send_timeout).",
                expected: "seconds > 0", valid: { $0 > 0 }),
        .text("metrics-bind", \.metricsBind, valueName: "ADDR",
              help: "Serve Prometheus metrics of the whole server (every worker and generation) at http://ADDR/metrics, from the master; HOST:PORT or unix:PATH, not one of the --bind addresses.")
            .checked { s in
                guard let m = s.metricsBind else { return nil }
                if case .failure(let e) = BindAddress.parse(m) { return "metrics-bind: \(e.description)" }
                if s.effectiveBinds.contains(m) {
                    return "metrics-bind \(m): expected an address of its own, found one of the application's --bind addresses (metrics are never served to the application's clients)"
                }
                return nil
            },

        // MARK: Request limits
        .number("limit-request-line", \.limitRequestLine, valueName: "BYTES",
                help: "Maximum request line size in bytes, 0 for unlimited.", expected: "0 (unlimited) to 8190",
                valid: { (0...8190).contains($0) }),
        .number("limit-request-fields", \.limitRequestFields, valueName: "N", help: "Maximum number of header fields.",
                expected: "0 to 32768", valid: { (0...32768).contains($0) }),
        .number("limit-request-field-size", \.limitRequestFieldSize, valueName: "BYTES",
                help: "Maximum size of one header field line in bytes, its CRLF included (as Gunicorn counts), 0 for unlimited.",
                expected: ">= 0", valid: { $0 >= 0 }),
        .number("limit-request-body", \.limitRequestBody, valueName: "BYTES",
                help: "Maximum request body in bytes; larger gets 413.", expected: ">= 0 bytes", valid: { $0 >= 0 }),
        .number("body-memory-limit", \.bodyMemoryLimit, valueName: "BYTES",
                help: "Request bodies above this many bytes are spooled to a temporary file.", expected: ">= 0 bytes",
                valid: { $0 >= 0 }),
        .text("spool-dir", \.spoolDirectory, valueName: "DIR", help: "Directory for spooled request bodies."),

        // MARK: Proxies
        Setting(name: "forwarded-allow-ips", short: nil, kind: .value, valueName: "LIST",
                help: "Comma-separated peers trusted to set X-Forwarded-For/-Proto: addresses, CIDR ranges (10.0.0.0/8), 'unix' (peers on a Unix socket, such as nginx), '*' for all.",
                defaultText: Settings().forwardedAllowIPs.entries.joined(separator: ","), inConfigFile: true,
                read: { s, value, _ in s.forwardedAllowIPs = try addresses(value) }, check: { _ in [] }),
        .toggle("proxy-protocol", \.proxyProtocol, help: "Expect a PROXY protocol (v1 or v2) header on each connection."),
        Setting(name: "proxy-allow-from", short: nil, kind: .value, valueName: "LIST",
                help: "Comma-separated peers allowed to send PROXY headers, in the form of --forwarded-allow-ips.",
                defaultText: Settings().proxyAllowFrom.entries.joined(separator: ","), inConfigFile: true,
                read: { s, value, _ in s.proxyAllowFrom = try addresses(value) }, check: { _ in [] }),

        // MARK: Logging
        .text("access-logfile", \.accessLogFile, valueName: "FILE",
              help: "Write an access log to FILE ('-' for standard output, as Gunicorn). Off by default.")
            .checked { s in
                guard let p = s.accessLogFile, p != "-" else { return nil }
                return Settings.appendable(p).map { "access-logfile \(p): \($0)" }
            },
        Setting(name: "access-logformat", short: nil, kind: .value, valueName: "FORMAT",
                help: "Access log format with Gunicorn's atoms, plus %(id)s for srv.request_id (default: combined, then the request id).",
                defaultText: nil, inConfigFile: true,
                read: { s, value, _ in s.accessLogFormat = AccessLogFormat(value) }, check: { _ in [] }),
        .text("error-logfile", \.errorLogFile, valueName: "FILE", help: "Error log file ('-' for stderr).",
              check: { s in
                  guard s.errorLogFile != "-" else { return [] }
                  return Settings.appendable(s.errorLogFile).map { ["error-logfile \(s.errorLogFile): \($0)"] } ?? []
              }),
        Setting(name: "log-level", short: nil, kind: .value, valueName: "LEVEL",
                help: "debug, info, warning, error or critical.", defaultText: Settings().logLevel, inConfigFile: true,
                read: { s, value, _ in s.logLevel = value.lowercased() },
                check: { s in
                    ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(s.logLevel) ? []
                        : ["log-level: expected one of debug, info, warning, error, critical, found \"\(s.logLevel)\""]
                }),
        .text("pid", \.pidFile, valueName: "FILE", help: "Write the master's pid to FILE."),

        // MARK: Workers' lives
        .number("timeout", short: "t", \.timeout, valueName: "SECONDS",
                help: "Kill a worker stuck in one request (or silent) this many seconds.", expected: "seconds > 0",
                valid: { $0 > 0 }),
        .number("graceful-timeout", \.gracefulTimeout, valueName: "SECONDS",
                help: "Seconds a stopping worker may finish its requests.", expected: "seconds >= 0", valid: { $0 >= 0 }),
        .number("boot-timeout", \.bootTimeout, valueName: "SECONDS",
                help: "Seconds a new worker may take to load its applications.", expected: "seconds > 0",
                valid: { $0 > 0 }),
        .number("max-requests", \.maxRequests, valueName: "N", help: "Replace a worker after this many requests, 0 to never.",
                expected: "0 (never) or more", valid: { $0 >= 0 }),
        .number("max-requests-jitter", \.maxRequestsJitter, valueName: "N",
                help: "Add a random 0...N to --max-requests per worker.", expected: "0 or more", valid: { $0 >= 0 },
                showDefault: false),

        // MARK: The process
        .text("runtime-dir", \.runtimeDirectory, valueName: "DIR",
              help: "Where the status file goes (default $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/srv, else /tmp/srv-UID)."),
        .text("user", short: "u", \.user, valueName: "USER",
              help: "Run the workers as this user (name or uid); srv must start as root, which binds first."),
        .text("group", short: "g", \.group, valueName: "GROUP",
              help: "Run the workers as this group (name or gid; default: the user's group)."),
        .text("chdir", \.chdir, valueName: "DIR",
              help: "Change to DIR before loading the applications; relative paths are taken from there.")
            .checked { s in
                guard let dir = s.chdir else { return nil }
                var st = stat()
                if stat(dir, &st) != 0 { return "chdir \(dir): expected an existing directory, found \(String(cString: strerror(errno)))" }
                return (st.st_mode & S_IFMT) == S_IFDIR ? nil : "chdir \(dir): expected an existing directory, found a file"
            },
        .list("env", short: "e", \.environment, valueName: "KEY=VALUE",
              help: "Set an environment variable for the workers; repeatable.", accumulates: true,
              check: { s in
                  s.environment.filter { !$0.contains("=") || $0.hasPrefix("=") }
                      .map { "env \"\($0)\": expected KEY=VALUE (for example -e BLOG_DATA_DIR=/var/lib/blog)" }
              }),
        Setting(name: "umask", short: "m", kind: .value, valueName: "MASK",
                help: "Mode mask (octal) for the Unix socket files srv creates (default 0: any local user may connect, as with a loopback port; 0o007 keeps the socket to srv's user and group).",
                defaultText: nil, inConfigFile: true,
                read: { s, value, _ in
                    var digits = Substring(value.trimmingSpaces)
                    if digits.hasPrefix("0o") { digits = digits.dropFirst(2) }
                    guard let mask = Int(digits, radix: 8) else {
                        throw SettingsProblem("expected an octal mode mask such as 0, 007 or 0o077, found \"\(value)\"")
                    }
                    s.umask = mask
                },
                check: { s in
                    (0...0o777).contains(s.umask) ? []
                        : ["umask: expected an octal mode mask from 0 to 0o777 (for example 0o007), found \(String(s.umask, radix: 8))"]
                }),
        .toggle("reload", \.reload, help: "Reload when an application file changes (after it stops changing)."),
        .number("reload-delay", \.reloadDelay, valueName: "SECONDS",
                help: "Seconds a changed file must stay unchanged before --reload acts.", expected: "seconds >= 0",
                valid: { $0 >= 0 }),
        .text("status-file", \.statusFile, valueName: "FILE", help: "Where the master writes its status for `srv status`."),
        Setting(name: "config", short: "c", kind: .value, valueName: "FILE",
                help: "Read settings from FILE (name = value lines, the long flag names).", defaultText: nil,
                inConfigFile: false, read: { s, value, _ in s.configFile = value }, check: { _ in [] }),
    ]

    private static func addresses(_ text: String) throws -> AddressList {
        do { return try AddressList(parsing: text) } catch { throw SettingsProblem("\(error)") }
    }

    /// The same setting with one more check (a problem, or nil).
    func checked(_ more: @escaping (Settings) -> String?) -> Setting {
        let first = check
        return Setting(name: name, short: short, kind: kind, valueName: valueName, help: help, defaultText: defaultText,
                       inConfigFile: inConfigFile, read: read, check: { first($0) + (more($0).map { [$0] } ?? []) })
    }
}
