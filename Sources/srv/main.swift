import ArgumentParser
import Foundation
import Glibc
import SrvCore

/// srv: an application server for web applications compiled as shared objects.
struct Srv: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "srv",
        abstract: "An application server for web applications compiled as shared objects (gateway spec ABI \(GatewayABI.major).\(GatewayABI.minor)).",
        discussion: """
            Examples:
              srv --app ./libblog.so -b 127.0.0.1:8000 -w 4
              srv --apps-dir ./apps --reload
              kill -HUP $(cat srv.pid)      # reload with zero dropped requests
              srv check ./libblog.so        # validate a plugin without serving
            """,
        version: GatewayABI.serverVersion,
        subcommands: [Serve.self, Check.self, Status.self, WorkerCommand.self],
        defaultSubcommand: Serve.self)
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve applications with a master and a pool of workers (the default).")

    @OptionGroup var options: ServeOptions
    @Flag(name: .customLong("check-config"), help: "Validate the configuration and exit.")
    var checkConfig = false

    func run() throws {
        let env = ProcessInfo.processInfo.environment
        let settings = try resolveSettings(commandLine: options, environment: env)
        if checkConfig {
            print("configuration OK: \(settings.mounts.count) app(s)\(settings.appsDir.map { " + apps dir \($0)" } ?? ""), \(settings.workers) worker(s), bind \(settings.effectiveBinds.joined(separator: ", "))")
            return
        }
        try ErrorLog.shared.configure(path: settings.errorLogFile)
        let options = self.options
        let source = ConfigurationSource {
            try resolveSettings(commandLine: options, environment: ProcessInfo.processInfo.environment)
        }
        let arbiter = Arbiter(configuration: source, settings: settings)
        throw ExitCode(arbiter.run())
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate plugins without serving them (each loads in a child process).")

    @Flag(name: .customLong("json"), help: "Print one JSON report per plugin, as a JSON array.")
    var json = false
    @Option(name: .customLong("timeout"), help: "Seconds a plugin may take to load (default 10).")
    var timeout: Double = 10
    @Option(name: .customLong("snapshot-dir"), help: .hidden)
    var snapshotDir: String = Snapshot.defaultDirectory
    @Flag(name: .customLong("in-process"), help: .hidden)
    var inProcess = false
    @Argument(help: ArgumentHelp("Plugins to check.", valueName: "PATH.so"))
    var paths: [String]

    func validate() throws {
        if paths.isEmpty { throw ValidationError("expected at least one plugin path, for example: srv check ./libhello.so") }
    }

    func run() throws {
        if inProcess { PluginCheck.runInProcess(path: paths[0], snapshotDirectory: snapshotDir) }
        let reports = paths.map { PluginCheck.run(path: $0, snapshotDirectory: snapshotDir, timeout: timeout) }
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
        if path == nil, let pidFile = pidFile {
            guard let text = FileManagerShim.read(pidFile), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw ValidationError("cannot read a pid from \(pidFile); is srv running with --pid \(pidFile)?")
            }
            path = ArbiterStatus.path(forMaster: pid)
        }
        if path == nil, let pid = masterPID { path = ArbiterStatus.path(forMaster: pid) }
        if path == nil {
            let dir = ArbiterStatus.directory
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
                .filter { $0.hasPrefix("master-") && $0.hasSuffix(".json") }
                .filter { f in Int32(f.dropFirst(7).dropLast(5)).map { kill($0, 0) == 0 } ?? false }
            guard files.count == 1 else {
                throw ValidationError(files.isEmpty ? "no running srv master found; start one, or give --pid FILE"
                                                    : "\(files.count) masters are running; choose one with --pid FILE or its pid")
            }
            path = "\(dir)/\(files[0])"
        }
        guard let text = FileManagerShim.read(path!), let status = try? JSONDecoder().decode(ArbiterStatus.self, from: Data(text.utf8)) else {
            throw ValidationError("no status at \(path!); is that master running?")
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
    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}

extension ServeOptions {
    static func message(for error: Error) -> String {
        fullMessage(for: error).replacingOccurrences(of: "\n", with: " ")
    }
}

Srv.main()
