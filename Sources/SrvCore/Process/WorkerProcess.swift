import CSrvSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import Logging

/// What the master tells a worker about one application to load.
public struct WorkerApp: Codable, Equatable {
    public var prefix: String
    public var snapshot: Snapshot
    public init(prefix: String, snapshot: Snapshot) { self.prefix = prefix; self.snapshot = snapshot }
}

/// The fds and environment through which master and worker talk. The worker gets:
/// fd 3 the write end of its control pipe, fd 4 its scoreboard page, fd 5.. the listeners.
public enum WorkerChannel {
    public static let controlFD: Int32 = 3
    public static let scoreboardFD: Int32 = 4
    public static let firstListenerFD: Int32 = 5
    public static let settingsVariable = "SRV_WORKER_SETTINGS"
    public static let appsVariable = "SRV_WORKER_APPS"
    public static let generationVariable = "SRV_WORKER_GENERATION"
    public static let listenersVariable = "SRV_WORKER_LISTENERS"
    /// The master's pid: a worker whose parent is already another process exits at once.
    public static let masterVariable = "SRV_WORKER_MASTER"
}

/// Messages a worker sends the master, one line each.
public enum WorkerMessage {
    /// Loaded, ABI checked, load hooks passed, serving.
    case ready
    /// Could not boot; the reason is shown in the log and `srv status`.
    case failed(reason: String, message: String)
    /// --max-requests reached: start my replacement, then retire me.
    case retire
    /// About to load the application mounted here (a crash or hang now is its fault).
    case loading(mount: String)
    /// One mounted application as its descriptor names it (sent before READY).
    case app(mount: String, name: String, version: String)

    public var line: String {
        switch self {
        case .ready: return "READY\n"
        case .failed(let r, let m): return "FAIL \(r) \(m.replacing("\n", with: " "))\n"
        case .retire: return "RETIRE\n"
        case .loading(let m): return "LOADING \(Self.field(m))\n"
        case .app(let m, let n, let v): return "APP \([m, n, v].map(Self.field).joined(separator: "\t"))\n"
        }
    }

    /// A field of a tab-separated message: the descriptor's strings are the plugin's, so no
    /// tab or line break of theirs may split the message.
    private static func field(_ s: String) -> String {
        String(s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? " " : Character($0) })
    }

    public static func parse(_ line: Substring) -> WorkerMessage? {
        if line == "READY" { return .ready }
        if line == "RETIRE" { return .retire }
        if line.hasPrefix("LOADING ") { return .loading(mount: String(line.dropFirst(8))) }
        if line.hasPrefix("APP ") {
            let f = line.dropFirst(4).split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 3 else { return nil }
            return .app(mount: f[0], name: f[1], version: f[2])
        }
        if line.hasPrefix("FAIL ") {
            let rest = line.dropFirst(5)
            let reason = rest.prefix(while: { $0 != " " })
            return .failed(reason: String(reason), message: String(rest.dropFirst(reason.count + 1)))
        }
        return nil
    }
}

/// `srv worker`: the process the master spawns. Loads the snapshots, reports READY, serves
/// until told to stop (TERM graceful, INT/QUIT immediate, USR1 reopen logs).
public enum WorkerProcess {
    static func send(_ message: WorkerMessage) {
        var line = message.line
        _ = line.withUTF8 { Glibc.write(WorkerChannel.controlFD, $0.baseAddress, $0.count) }
    }

    /// A worker without its master serves without supervision (no --timeout, no
    /// reload) and holds the port a new master needs: when the master dies, even by
    /// SIGKILL, the kernel kills its workers at once (a hung request cannot delay it).
    /// The signal is armed before anything else, and a master that died before that is
    /// noticed by the parent having changed.
    static func dieWithMaster(_ env: [String: String]) {
        _ = srv_sys_set_parent_death_signal(SIGKILL)
        if let master = env[WorkerChannel.masterVariable].flatMap(pid_t.init), getppid() != master { _exit(0) }
    }

    public static func run() -> Never {
        let env = ProcessInfo.processInfo.environment
        dieWithMaster(env)
        guard let settingsJSON = env[WorkerChannel.settingsVariable], let appsJSON = env[WorkerChannel.appsVariable],
              let settings = try? JSONDecoder().decode(Settings.self, from: Data(settingsJSON.utf8)),
              let apps = try? JSONDecoder().decode([WorkerApp].self, from: Data(appsJSON.utf8)) else {
            fputs("srv worker: expected to be started by the srv master (missing \(WorkerChannel.settingsVariable)); run `srv --app FILE.so` instead\n", stderr)
            exit(2)
        }
        // Privileges go before any application code runs: load hooks run as --user too.
        if let problem = Identity.drop(uid: settings.workerUID, gid: settings.workerGID) {
            send(.failed(reason: "user", message: "cannot switch the worker to uid \(settings.workerUID.map(String.init) ?? "-") gid \(settings.workerGID.map(String.init) ?? "-"): \(problem)"))
            exit(3)
        }
        // Changing credentials clears the parent-death signal: set it again.
        dieWithMaster(env)
        let generation = Int(env[WorkerChannel.generationVariable] ?? "") ?? 1
        let listenerCount = Int(env[WorkerChannel.listenersVariable] ?? "") ?? 0
        try? ErrorLog.shared.configure(path: settings.errorLogFile)
        let logger = ErrorLog.logger(label: "srv.worker", level: Logger.Level(setting: settings.logLevel))

        // Signals go to one thread that waits for them; block them before NIO starts threads.
        var signalSet = sigset_t()
        sigemptyset(&signalSet)
        for s in [SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR2] { sigaddset(&signalSet, s) }
        pthread_sigmask(SIG_BLOCK, &signalSet, nil)
        signal(SIGPIPE, SIG_IGN)

        // The snapshots' descriptors are for dlopen here, not for processes an app starts.
        for app in apps { _ = fcntl(app.snapshot.descriptor, F_SETFD, FD_CLOEXEC) }
        var mounted: [MountedApp] = []
        for app in apps {
            send(.loading(mount: app.prefix))
            do {
                let plugin = try Plugin(file: app.snapshot.path, displayPath: app.snapshot.source, snapshot: app.snapshot)
                // Without SRV_FLAG_THREAD_SAFE the app runs on the event loop, --threads or not.
                try plugin.runLoadHook(mount: app.prefix, multithread: settings.threads > 1 && plugin.threadSafe,
                                       multiprocess: settings.workers > 1)
                mounted.append(MountedApp(mount: app.prefix, plugin: plugin, metricsSlot: mounted.count + 1))
            } catch let e as PluginError {
                // The master logs it, with the worker and what it does next: said once.
                send(.failed(reason: e.reason, message: e.description))
                exit(3)
            } catch {
                send(.failed(reason: "error", message: "\(error)"))
                exit(3)
            }
        }

        var accessLog: AccessLog?
        if let path = settings.accessLogFile {
            do {
                accessLog = try AccessLog(path: path, format: settings.accessLogFormat)
            } catch {
                let message = "cannot open the access log \(path) as uid \(getuid()): \(error); check its owner and mode"
                logger.error("\(message)")
                send(.failed(reason: "access-log", message: message))
                exit(3)
            }
        }
        let scoreboard = Scoreboard(fd: WorkerChannel.scoreboardFD)
        let server = WorkerServer(settings: settings, apps: mounted, logger: logger, scoreboard: scoreboard,
                                  accessLog: accessLog, generation: generation, multiprocess: settings.workers > 1)
        server.onRetire = { send(.retire) }
        // READY before the first accept: from then on a crash is a request's, not the boot's
        // (a request that crashes a worker must never fail a start or a reload).
        // Told to stop while it loaded (its signals were blocked): it goes without serving,
        // so the master may kill a worker that has not said READY 2 s after TERM.
        if Self.stopPending() {
            logger.debug("worker \(getpid()) was told to stop while booting; exiting before it serves")
            for app in mounted { app.plugin.runUnloadHook() }
            exit(0)
        }
        for app in mounted { send(.app(mount: app.mount, name: app.plugin.name, version: app.plugin.version)) }
        send(.ready)
        do {
            try server.serve(listenerFDs: (0..<listenerCount).map { WorkerChannel.firstListenerFD + Int32($0) })
        } catch {
            logger.critical("cannot serve on the inherited listeners: \(error)")
            exit(3)
        }
        logger.debug("worker \(getpid()) of generation \(generation) ready: \(mounted.map { "\($0.plugin.name) \($0.plugin.snapshot?.shortHash ?? "")" }.joined(separator: ", "))")

        let waitSet = signalSet
        let logs = accessLog
        startThread {
            var set = waitSet
            while true {
                var sig: Int32 = 0
                guard sigwait(&set, &sig) == 0 else { continue }
                switch sig {
                case SIGTERM, SIGHUP:
                    server.shutdownGracefully(timeout: settings.gracefulTimeout)
                case SIGINT, SIGQUIT:
                    // At once, even while a request runs: _exit, because exit() would run
                    // atexit handlers and destructors while application threads still run.
                    _exit(0)
                case SIGUSR1:
                    ErrorLog.shared.reopen()
                    logs?.reopen()
                default:
                    break
                }
            }
        }
        server.waitUntilStopped()
        for app in mounted { app.plugin.runUnloadHook() }
        exit(0)
    }
}

extension WorkerProcess {
    /// TERM, HUP, INT or QUIT arrived while they were blocked.
    static func stopPending() -> Bool {
        var pending = sigset_t()
        sigemptyset(&pending)
        guard sigpending(&pending) == 0 else { return false }
        return [SIGTERM, SIGHUP, SIGINT, SIGQUIT].contains { sigismember(&pending, $0) == 1 }
    }
}

/// Runs `body` on a detached thread of its own: a plain pthread (Foundation's Thread would
/// bring Foundation, and ICU with it, into every worker).
private func startThread(_ body: @escaping () -> Void) {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { argument in
        Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue().body()
        return nil
    }, box)
    precondition(rc == 0, "cannot start a thread: \(String(cString: strerror(rc)))")
    pthread_detach(thread)
}

private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}
