import ArgumentParser
import Foundation
import Glibc
import SrvCore

/// srv: an application server for web applications compiled as shared objects.
/// `srv [serving flags]` serves (the default subcommand, `serve`); `srv check` and
/// `srv status` are tools beside it. `srv --help` shows the serving flags (see the end).
struct Srv: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "srv",
        abstract: "An application server for web applications compiled as shared objects (gateway spec ABI \(GatewayABI.major).\(GatewayABI.minor)).",
        version: GatewayABI.versionText,
        subcommands: [Serve.self, Check.self, Status.self, WorkerCommand.self],
        defaultSubcommand: Serve.self)
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "An application server for web applications compiled as shared objects (gateway spec ABI \(GatewayABI.major).\(GatewayABI.minor)).",
        usage: """
            srv --app FILE.so [-b ADDRESS] [-w N] [options]
            srv --apps-dir DIR [options]
            srv check PATH.so ...             validate plugins without serving (srv check --help)
            srv status [--pid FILE | PID]     a running master's generation, apps and workers
            """,
        discussion: """
            Examples:
              srv --app ./libblog.so -b 127.0.0.1:8000 -w 4 --pid srv.pid
              srv --apps-dir ./apps --reload
              kill -HUP $(cat srv.pid)      # reload with zero dropped requests
              srv check ./libblog.so        # validate a plugin without serving
              srv status --pid srv.pid      # generation, applications, workers

            Flags win over SRV_CMD_ARGS, which wins over the config file (-c). Gunicorn's
            underscore spellings of the flags (--limit-request-field_size) are accepted.
            Exit status: 0 stopped cleanly, 1 could not serve, 64 bad flags or configuration.
            """)

    @OptionGroup var options: ServeOptions
    @Flag(name: .customLong("check-config"), help: "Validate the configuration and every application (as `srv check` does), then exit.")
    var checkConfig = false

    func run() throws { try serve(options, checkConfig: checkConfig) }
}

func serve(_ options: ServeOptions, checkConfig: Bool) throws {
    let env = ProcessInfo.processInfo.environment
    let settings = try resolveSettings(commandLine: options, environment: env)
    if checkConfig {
        let binds = settings.effectiveBinds.map { text -> String in
            guard case .success(let a) = BindAddress.parse(text) else { return text }
            return "\(text) -> \(a.explained)"
        }
        print("configuration OK: \(settings.workers) worker(s), bind \(binds.joined(separator: ", "))")
        var paths = settings.mounts.map { $0.path }
        if let dir = settings.appsDir { paths += AppsDirectory.scan(dir, logger: nil).map { $0.path } }
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        var invalid = 0
        for path in paths {
            let r = PluginCheck.run(path: path, snapshotDirectory: scratch.path, timeout: settings.bootTimeout)
            if r.valid {
                print("app ok  \(path)  (\(r.name ?? "") \(r.version ?? ""))")
            } else {
                invalid += 1
                print("app INVALID \(path)\n        \(r.error ?? "invalid")")
            }
        }
        if paths.isEmpty, let dir = settings.appsDir { print("apps dir \(dir) holds no lib<name>.so yet") }
        if invalid > 0 { throw ExitCode(1) }
        return
    }
    try ErrorLog.shared.configure(path: settings.errorLogFile)
    if let dir = settings.chdir, chdir(dir) != 0 {
        throw ValidationError("chdir \(dir): \(String(cString: strerror(errno)))")
    }
    let source = ConfigurationSource {
        try resolveSettings(commandLine: options, environment: ProcessInfo.processInfo.environment)
    }
    let arbiter = Arbiter(configuration: source, settings: settings)
    throw ExitCode(arbiter.run())
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate plugins without serving them (each loads in a child process).")

    @Flag(name: .customLong("json"), help: "Print one JSON report per plugin, as a JSON array.")
    var json = false
    @Option(name: .customLong("timeout"), help: "Seconds a plugin may take to load (default 10).")
    var timeout: Double = 10
    @Option(name: .customLong("snapshot-dir"), help: .hidden)
    var snapshotDir: String?
    @Flag(name: .customLong("in-process"), help: .hidden)
    var inProcess = false
    @Argument(help: ArgumentHelp("Plugins to check.", valueName: "PATH.so"))
    var paths: [String]

    func validate() throws {
        if paths.isEmpty { throw ValidationError("expected at least one plugin path, for example: srv check ./libhello.so") }
    }

    func run() throws {
        if inProcess, let dir = snapshotDir { PluginCheck.runInProcess(path: paths[0], snapshotDirectory: dir) }
        // The copies a check loads live in a directory of their own, removed afterwards.
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let reports = paths.map { PluginCheck.run(path: $0, snapshotDirectory: snapshotDir ?? scratch.path, timeout: timeout) }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(reports), as: UTF8.self))
        } else {
            for r in reports {
                if r.valid {
                    print("ok      \(r.path)\n        name \(r.name ?? "")  version \(r.version ?? "")  ABI \(r.abi ?? "")  thread-safe \(r.threadSafe == true ? "yes" : "no")\n        sha256 \(r.hash ?? "")")
                } else {
                    print("INVALID \(r.path)\n        \(r.error ?? "invalid")")
                }
            }
        }
        if reports.contains(where: { !$0.valid }) { throw ExitCode(1) }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a running master's generation, applications and workers.")

    @Option(name: .customLong("pid"), help: "The master's pid file (as given to --pid).")
    var pidFile: String?
    @Option(name: .customLong("status-file"), help: "The master's status file (as given to --status-file).")
    var statusFile: String?
    @Flag(name: .customLong("json"), help: "Print the raw JSON.")
    var json = false
    @Argument(help: "The master's pid.")
    var masterPID: Int32?

    func run() throws {
        var path = statusFile
        var pid = masterPID
        if path == nil, let pidFile = pidFile {
            guard let text = FileManagerShim.read(pidFile), let p = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw ValidationError("cannot read a pid from \(pidFile); is srv running with --pid \(pidFile)?")
            }
            pid = p
        }
        if path == nil {
            // Masters of any user (a systemd unit's DynamicUser among them) are found in
            // their runtime directories.
            let name = pid.map { ArbiterStatus.fileName(forMaster: $0) }
            var found: [String] = []
            for dir in RuntimeDirectory.searchPaths {
                let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
                    .filter { f in name.map { f == $0 } ?? ArbiterStatus.isStatusFileOfLiveMaster(f) }
                found += files.map { "\(dir)/\($0)" }
            }
            guard found.count == 1 else {
                if let pid = pid { throw ValidationError("no status file for master \(pid) in \(RuntimeDirectory.searchPaths.joined(separator: ", ")); is it running? Give --status-file PATH if it was started with --runtime-dir or --status-file") }
                throw ValidationError(found.isEmpty ? "no running srv master found; start one, or give --pid FILE"
                                                    : "\(found.count) masters are running; choose one with --pid FILE or its pid")
            }
            path = found[0]
        }
        guard let text = FileManagerShim.read(path!) else {
            throw ValidationError("cannot read the status at \(path!) (\(String(cString: strerror(errno)))); is that master running, and may this user read its runtime directory? (root can)")
        }
        guard let status = try? JSONDecoder().decode(ArbiterStatus.self, from: Data(text.utf8)) else {
            throw ValidationError("\(path!) is not a status file of this srv version")
        }
        print(json ? text : status.text)
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", abstract: "A worker process (started by the master).",
                                                    shouldDisplay: false)
    func run() throws { WorkerProcess.run() }
}

enum FileManagerShim {
    static func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
    static func absolute(_ path: String, from base: String? = nil) -> String {
        path.hasPrefix("/") ? path : (base ?? FileManager.default.currentDirectoryPath) + "/" + path
    }
}

/// A private directory for one command's scratch files (mkdtemp), removed with its contents.
struct TemporaryDirectory {
    let path: String
    init() throws {
        var template = Array((NSTemporaryDirectory() as NSString).appendingPathComponent("srv-check.XXXXXX").utf8CString)
        guard let p = mkdtemp(&template) else { throw ValidationError("cannot create a temporary directory: \(String(cString: strerror(errno)))") }
        path = String(cString: p)
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

extension ServeOptions {
    static func message(for error: Error) -> String {
        fullMessage(for: error).replacingOccurrences(of: "\n", with: " ")
    }
}

let arguments = ServeOptions.normalizingUnderscores(Array(CommandLine.arguments.dropFirst()))
// `srv --help` is the help of serving, the default subcommand: its flags are what an
// operator looks for (ArgumentParser would show only the list of subcommands).
if arguments.count == 1, ["--help", "-h", "help"].contains(arguments[0]) {
    print(Srv.helpMessage(for: Serve.self))
    exit(0)
}
Srv.main(arguments)
