import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import SrvCore

/// srv: an application server for web applications compiled as shared objects.
/// `srv [serving flags]` serves (`srv serve` is the same); `srv check` and `srv status` are
/// tools beside it, parsed by ArgumentParser. The serving flags are srv's settings, each
/// declared once in `Setting.all`, which parses them and writes their help.
struct Srv: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "srv",
        abstract: overview,
        version: GatewayABI.versionText,
        subcommands: [Check.self, Status.self, WorkerCommand.self])
}

let overview = "An application server for web applications compiled as shared objects (gateway spec ABI \(GatewayABI.major).\(GatewayABI.minor))."
let usageLine = "srv --app FILE.so [-b ADDRESS] [-w N] [options]"
let usage = """
    USAGE: \(usageLine)
           srv --apps-dir DIR [options]
           srv check PATH.so ...             validate plugins without serving (srv check --help)
           srv status [--pid FILE | PID]     a running master's generation, apps and workers
    """

/// `srv --help`: what an operator looks for is the serving flags.
func serveHelp() -> String {
    """
    OVERVIEW: \(overview)

    Examples:
      srv --app ./libblog.so -b 127.0.0.1:8000 -w 4 --pid srv.pid
      srv --apps-dir ./apps --reload
      kill -HUP $(cat srv.pid)      # reload with zero dropped requests
      srv check ./libblog.so        # validate a plugin without serving
      srv status --pid srv.pid      # generation, applications, workers

    Flags win over SRV_CMD_ARGS, which wins over the config file (-c), whose names are the
    long flags' (workers = 4). Gunicorn's underscore spellings of the flags
    (--limit-request-field_size) are accepted.
    Exit status: 0 stopped cleanly, 1 could not serve, 64 bad flags or configuration.

    \(usage)

    OPTIONS:
    \(SettingSources.optionsHelp())
    """
}

/// A bad flag or setting: said once, then how to get help; exit status 64 (EX_USAGE).
/// Bad input: what was wrong and where, then (for the command line) how it is used. Exit 64.
func usageError(_ message: String, showUsage: Bool = true) -> Never {
    let usage = showUsage ? "Usage: \(usageLine)\n  See 'srv --help' for more information.\n" : ""
    fputs("Error: \(message)\n\(usage)", stderr)
    exit(64)
}

/// Serving: the command line is srv's settings plus --check-config, --help and --version.
func runServe(_ arguments: [String]) -> Never {
    var command = SettingSources.CommandFlags()
    let flags: [SettingSources.Value]
    do { flags = try SettingSources.parseFlags(arguments, command: &command) } catch { usageError("\(error)") }
    if command.help { print(serveHelp()); exit(0) }
    if command.version { print(GatewayABI.versionText); exit(0) }
    do {
        try serve(flags, checkConfig: command.checkConfig)
        exit(0)
    } catch let e as ExitCode {
        exit(e.rawValue)
    } catch let e as SettingsProblem {
        usageError(e.description, showUsage: e.aboutCommandLine)
    } catch let e as ValidationError {
        usageError(e.message)
    } catch {
        fputs("Error: \(error)\n", stderr)
        exit(1)
    }
}

func serve(_ flags: [SettingSources.Value], checkConfig: Bool) throws {
    let settings = try SettingSources.resolve(flags: flags, environment: ProcessInfo.processInfo.environment)
    if checkConfig {
        let binds = settings.effectiveBinds.map { text -> String in
            guard case .success(let a) = BindAddress.parse(text) else { return text }
            return "\(text) -> \(a.explained)"
        }
        print("configuration OK: \(settings.workers) worker(s), bind \(binds.joined(separator: ", "))")
        var paths = settings.mounts.map { $0.path }
        if let dir = settings.appsDir { paths += AppsDirectory.scan(dir, logger: nil).map { $0.path } }
        var invalid = 0
        for path in paths {
            let r = PluginCheck.run(path: path, timeout: settings.bootTimeout, strict: !settings.insecurePlugins,
                                    uid: settings.workerUID, gid: settings.workerGID)
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
        try SettingSources.resolve(flags: flags, environment: ProcessInfo.processInfo.environment)
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
    @Option(name: .customLong("content-hash"), help: .hidden)
    var contentHash: String?
    @Option(name: .customLong("uid"), help: .hidden)
    var uid: UInt32?
    @Option(name: .customLong("gid"), help: .hidden)
    var gid: UInt32?
    @Flag(name: .customLong("insecure-plugins"), help: "Check plugins that users other than yours and root may write, as `srv --insecure-plugins` serves them.")
    var insecurePlugins = false
    @Flag(name: .customLong("in-process"), help: .hidden)
    var inProcess = false
    @Argument(help: ArgumentHelp("Plugins to check.", valueName: "PATH.so"))
    var paths: [String]

    func validate() throws {
        if paths.isEmpty { throw ValidationError("expected at least one plugin path, for example: srv check ./libhello.so") }
    }

    func run() throws {
        if inProcess, let hash = contentHash { PluginCheck.runInProcess(path: paths[0], hash: hash, uid: uid, gid: gid) }
        let reports = paths.map { PluginCheck.run(path: $0, timeout: timeout, strict: !insecurePlugins) }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
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
            guard let text = TextFile.read(pidFile), let p = Int32(text.trimmingWhitespace) else {
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
                if let pid = pid, let name = name {
                    let source = pidFile.map { " (from \($0))" } ?? ""
                    if !Spawn.isRunning(pid) {
                        throw ValidationError("no process \(pid)\(source) is running: srv is not running, or the pid file was left by an srv that was killed")
                    }
                    throw ValidationError("process \(pid)\(source) is running, but no status file \(name) is where srv puts it (\(RuntimeDirectory.defaultPath), or /run/UNIT for a systemd unit); if it was started with --runtime-dir DIR or --status-file PATH, give --status-file PATH")
                }
                throw ValidationError(found.isEmpty ? "no running srv master found; start one, or give --pid FILE"
                                                    : "\(found.count) masters are running; choose one with --pid FILE or its pid")
            }
            path = found[0]
        }
        guard let text = TextFile.read(path!) else {
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


let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "check", "status", "worker":
    Srv.main(SettingSources.normalizingUnderscores(arguments))
case "serve":
    runServe(Array(arguments.dropFirst()))
case "help":
    if arguments.count == 1 || arguments[1] == "serve" { print(serveHelp()) } else { Srv.main(arguments) }
default:
    runServe(arguments)
}
