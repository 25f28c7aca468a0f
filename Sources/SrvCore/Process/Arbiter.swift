import CSrvSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import Logging

/// The master process, after Gunicorn's arbiter: it owns the listeners, starts and watches
/// the workers, and turns signals into actions. It is single-threaded on purpose (it
/// starts children) and never loads application code.
///
/// Its life reads top to bottom: `run` opens the listeners and prepares the first
/// generation, then `loop` turns until the master stops: wait for a signal, a worker's
/// message, a check's report or the next tick; handle signals; read messages; reap
/// children; boot a prepared generation; tick the supervisor; write the status. What to
/// do with workers and generations is decided by `Supervisor`, a state machine; this
/// class carries its actions out (spawn, signal, log, notify systemd).
public final class Arbiter {
    /// A worker process's resources: its control pipe and scoreboard.
    final class WorkerLink {
        let control: Int32
        let scoreboard: Scoreboard
        var pendingLine = ""
        init(control: Int32, scoreboard: Scoreboard) {
            self.control = control
            self.scoreboard = scoreboard
        }
        deinit { close(control) }
    }

    public let configuration: ConfigurationSource
    /// The serving generation's settings (the command line's until one serves).
    var settings: Settings
    var listeners: [Listener] = []
    var supervisor = Supervisor()
    var links: [pid_t: WorkerLink] = [:]
    /// A start or reload whose snapshots are taken and whose plugins are being checked.
    var preparation: Preparation?
    var generationCounter = 0
    var signalFD: Int32 = -1
    var exitCode: Int32 = 0
    var stopped = false
    var lastReloadError: String?
    var appErrors: [String: String] = [:]
    var logger: Logger
    var reexecChild: pid_t?
    let notify = SystemdNotify()
    var watcher: AppWatcher?
    let startedAt = Date()
    /// The reload under way was asked for by --reload's watcher, not by HUP.
    var reloadForFiles = false
    /// The status file lives here (RuntimeDirectory).
    let runtimeDirectory: String
    /// The runtime directory could not be made again: said once.
    var runtimeDirectoryProblemLogged = false
    var statusWriter: StatusWriter
    /// The TCP listeners were opened for --reuse-port (decided once, at start): the
    /// master's own sockets hold the addresses without listening.
    var reusingPorts = false
    /// --metrics-bind: the whole server's numbers, and where the master serves them.
    let metrics = ServerMetrics()
    var metricsServer: MetricsServer?

    /// The signals the master handles, all through its signalfd (CSrvSystem blocks them
    /// before main runs).
    public static let signals: [Int32] = {
        var count: Int32 = 0
        let list = srv_sys_master_signals(&count)!
        return (0..<Int(count)).map { list[$0] }
    }()

    public init(configuration: ConfigurationSource, settings: Settings) {
        self.configuration = configuration
        self.settings = settings
        self.logger = ErrorLog.logger(label: "srv.master", level: Logger.Level(setting: settings.logLevel))
        runtimeDirectory = settings.runtimeDirectory ?? RuntimeDirectory.defaultPath
        statusWriter = StatusWriter(path: settings.statusFile ?? "\(runtimeDirectory)/\(ArbiterStatus.fileName(forMaster: getpid()))")
    }

    // MARK: - Life

    /// Runs the master until it stops; returns the process exit code.
    public func run() -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        _ = Spawn.executable  // remember where we came from before a deploy replaces it
        signalFD = Self.signals.withUnsafeBufferPointer { srv_sys_signalfd($0.baseAddress, Int32($0.count)) }
        guard signalFD >= 0 else { logger.critical("cannot create a signalfd"); return 1 }
        // The applications first: one that is missing or no plugin at all is bad input,
        // like a bad flag (exit 64), found before srv binds (the rest of loading happens
        // in the workers, or in check children).
        // (Held by `preparation` alone: a snapshot lives as long as something uses it.)
        preparation = Preparation(settings: settings, previous: nil, logger: logger)
        if let refusal = preparation?.explicitRefusal {
            preparation?.cancel()
            logger.critical("cannot start: \(refusal); nothing to serve")
            return 64
        }
        do {
            try prepareRuntimeFiles()
            listeners = try openListeners()
            metricsServer = try openMetricsListener()
        } catch {
            preparation?.cancel()  // no check child outlives the master
            logger.critical("\(error)")
            return 1
        }
        if let pidFile = settings.pidFile { writePidFile(pidFile) }
        let files = raiseFileLimit()
        logger.info("srv \(GatewayABI.serverVersion.dropFirst(4)) master \(getpid()) listening at \(listeners.map { l in BindAddress.parse(l.boundDescription).map { "http://\($0.explained)" }.get(or: l.boundDescription) }.joined(separator: ", "))\(settings.workerUID.map { "; workers run as uid \($0) gid \(settings.workerGID ?? $0)" } ?? ""); \(files) open files per process")
        if geteuid() == 0 && settings.workerUID == nil {
            logger.warning("running as root without -u/--user: the workers, and so the applications, run as root; give -u USER (for example -u nobody) to run them as an ordinary user")
        }
        if settings.reload { watcher = AppWatcher(settings: settings, logger: logger) }
        return loop()
    }

    private func loop() -> Int32 {
        while !stopped {
            waitForEvents(milliseconds: 100)
            while case let sig = srv_sys_signalfd_read(signalFD), sig > 0 { handleSignal(sig) }
            readWorkerMessages()
            reapChildren()
            metricsServer?.serve(now: Instant.now(), render: renderMetrics)
            bootPreparedGeneration()
            if let watcher = watcher, watcher.poll(), supervisor.stopping == .no {
                logger.info("application files changed (--reload); reloading")
                reload(filesChanged: true)
            }
            perform(supervisor.handle(.tick(activity: activity()), now: Instant.now()))
            writeStatusIfDue()
        }
        logger.info("master \(getpid()) shutting down")
        cleanup()
        return exitCode
    }

    /// Sleeps until a signal, a worker's message or a check's report arrives, or the tick.
    private func waitForEvents(milliseconds: Int32) {
        var fds = [pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)]
        for link in links.values { fds.append(pollfd(fd: link.control, events: Int16(POLLIN), revents: 0)) }
        for fd in preparation?.descriptors ?? [] { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        if let watcher = watcher { fds.append(pollfd(fd: watcher.fd, events: Int16(POLLIN), revents: 0)) }
        fds += metricsServer?.pollDescriptors ?? []
        _ = poll(&fds, nfds_t(fds.count), milliseconds)
    }

    private func cleanup() {
        if let pidFile = settings.pidFile,
           let text = try? String(contentsOfFile: pidFile, encoding: .utf8), text.trimmingWhitespace == String(getpid()) {
            unlink(pidFile)
        }
        // The status file and Unix socket files belong to the new master after USR2.
        if reexecChild == nil || settings.statusFile == nil { unlink(statusWriter.path) }
        if reexecChild == nil {
            for l in listeners + [metricsServer?.listener].compactMap({ $0 }) { if case .unix(let path) = l.address { unlink(path) } }
        }
    }

    // MARK: - Signals

    func handleSignal(_ sig: Int32) {
        switch sig {
        case SIGCHLD:
            break  // reapChildren runs on every turn of the loop
        case SIGHUP:
            logger.info("HUP: reloading")
            reload()
        case SIGTERM:
            guard supervisor.stopping == .no else { return }
            logger.info("TERM: stopping gracefully (up to \(settings.gracefulTimeout) s)")
            announceStopping()
            // The workers take what waits in the listen queues, then close their copies;
            // once the last copy is closed a new client is refused at once, instead of
            // being queued and reset when srv exits.
            for l in listeners { close(l.fd) }
            cancelPreparation()
            perform(supervisor.handle(.stop(graceful: true), now: Instant.now()))
        case SIGINT, SIGQUIT:
            logger.info("\(sig == SIGINT ? "INT" : "QUIT"): stopping now")
            announceStopping()
            cancelPreparation()
            perform(supervisor.handle(.stop(graceful: false), now: Instant.now()))
        case SIGTTIN:
            perform(supervisor.handle(.resize(by: 1), now: Instant.now()))
        case SIGTTOU:
            perform(supervisor.handle(.resize(by: -1), now: Instant.now()))
        case SIGUSR1:
            logger.info("USR1: reopening log files")
            ErrorLog.shared.reopen()
            for pid in links.keys { kill(pid, SIGUSR1) }
        case SIGUSR2:
            reexec()
        default:
            break
        }
    }

    /// Tells systemd the service stops, unless a new master (USR2) took over: with
    /// NotifyAccess=all systemd would take the retiring master's STOPPING=1 for the
    /// service's and stop the new master too.
    private func announceStopping() {
        if reexecChild == nil { notify.send("STOPPING=1") }
    }

    // MARK: - Carrying out the supervisor's actions

    private func perform(_ actions: [Supervisor.Action]) {
        for action in actions {
            switch action {
            case .spawn(let number, let replacing):
                guard supervisor.wantsWorkers(of: number), let g = supervisor.generations[number] else { continue }
                switch spawnWorker(g) {
                case .success(let pid):
                    perform(supervisor.handle(.spawned(pid: pid, generation: number, replacing: replacing), now: Instant.now()))
                case .failure(let error):
                    perform(supervisor.handle(.spawnFailed(generation: number, error: error.description), now: Instant.now()))
                }
            case .signal(let pid, let sig):
                kill(pid, sig)
            case .exited(_, let cause):
                metrics.workerExits[cause, default: 0] += 1
            case .log(let level, let message):
                logger.log(level: level, "\(message)")
            case .promoted(let number, let previous):
                promoted(number, previous: previous)
            case .failed(_, let reason, let fatal):
                if fatal {
                    logger.critical("worker failed to boot: \(reason)")
                    exitCode = 1
                } else {
                    reloadFailed(reason)
                }
            case .stopped:
                stopped = true
            }
        }
    }

    private func promoted(_ number: Int, previous: Int?) {
        guard let g = supervisor.currentGeneration else { return }
        settings = g.settings
        lastReloadError = nil
        if previous != nil { metrics.reloads["promoted", default: 0] += 1 }
        writeStatusIfDue(force: true)
        if let old = previous {
            logger.info("generation \(number) ready (\(g.versions)); retiring generation \(old)")
            notify.send("READY=1\nSTATUS=serving generation \(number): \(g.versions)")
        } else {
            logger.info("generation \(number) ready: \(g.target) worker(s) serving \(g.versions)")
            notify.send("READY=1\nSTATUS=serving generation \(number): \(g.versions)\nMAINPID=\(getpid())")
            if let old = ProcessInfo.processInfo.environment["SRV_OLD_MASTER_PID"].flatMap({ pid_t($0) }), old > 1 {
                logger.info("took over from master \(old) (USR2); asking it to retire")
                kill(old, SIGTERM)
            }
        }
        if let watcher = watcher { watcher.update(settings: g.settings) } else if g.settings.reload {
            watcher = AppWatcher(settings: g.settings, logger: logger)
        }
    }

    private func reloadFailed(_ reason: String) {
        let serving = supervisor.currentGeneration
        // Only a generation with a worker that is ready serves anything.
        let ready = serving.map { g in supervisor.workers.values.filter { $0.generation == g.number && $0.state == .serving }.count } ?? 0
        let keeps = ready > 0 ? "keeps serving with \(ready) worker(s)" : "has no worker serving (srv keeps starting them)"
        logger.error("reload failed: \(reason); generation \(serving?.number ?? 0) (\(serving?.versions ?? "")) \(keeps)")
        lastReloadError = reason
        metrics.reloads["failed", default: 0] += 1
        writeStatusIfDue(force: true)
        notify.send("READY=1\nSTATUS=reload failed: \(reason.prefix(200)); generation \(serving?.number ?? 0) \(keeps)")
    }

    // MARK: - Reload: a new generation of processes

    /// HUP: re-read the configuration and snapshot the plugins; the loop boots the new
    /// generation beside the serving one once its plugins are checked, and the
    /// supervisor promotes it once every new worker is ready.
    func reload(filesChanged: Bool = false) {
        guard supervisor.stopping == .no else { return }
        reloadForFiles = filesChanged
        notify.send("RELOADING=1\nMONOTONIC_USEC=\(Instant.now().nanoseconds / 1000)")
        let fresh: Settings
        do {
            fresh = try configuration.load()
        } catch {
            logger.error("reload: the configuration is invalid, keeping the running settings: \(error)")
            lastReloadError = "configuration: \(error)"
            metrics.reloads["failed", default: 0] += 1
            notify.send("READY=1\nSTATUS=reload refused: invalid configuration")
            return
        }
        if preparation != nil {
            logger.info("reload: replacing the reload whose plugins were still being checked")
            cancelPreparation()
        }
        if fresh.effectiveBinds != settings.effectiveBinds {
            logger.warning("reload: bind addresses changed; listeners are kept for the life of the master (restart srv to change them)")
        }
        logger.logLevel = Logger.Level(setting: fresh.logLevel)
        preparation = Preparation(settings: fresh, previous: supervisor.currentGeneration?.apps, logger: logger)
        bootPreparedGeneration()
    }

    private func cancelPreparation() {
        preparation?.cancel()
        preparation = nil
    }

    /// Once every check of the preparation has ended: boot its generation, or say why not.
    private func bootPreparedGeneration() {
        guard let p = preparation else { return }
        p.poll(now: Instant.now())
        guard p.isComplete else { return }
        preparation = nil
        let serving = supervisor.currentGeneration
        switch p.outcome(logger: logger) {
        case .apps(let apps, let errors):
            appErrors = errors
            if let serving = serving, serving.apps == apps, serving.settings == p.settings, errors.isEmpty {
                if reloadForFiles {
                    // --reload saw a file event, but every build is the one serving.
                    logger.info("reload: no application changed; generation \(serving.number) keeps serving")
                    notify.send("READY=1\nSTATUS=serving generation \(serving.number): \(serving.versions)")
                    return
                }
                logger.info("reload: nothing changed; starting a new generation anyway (HUP restarts workers)")
            }
            if let serving = serving {
                for gone in serving.apps where !apps.contains(where: { $0.prefix == gone.prefix }) && errors[gone.prefix] == nil {
                    logger.info("app \(gone.prefix.isEmpty ? "/" : gone.prefix): unmounted (\(gone.snapshot.source) is no longer configured or in the apps directory)")
                }
            }
            generationCounter += 1
            let g = Generation(number: generationCounter, settings: p.settings, apps: apps, phase: .booting(deadline: Instant.now()))
            if serving != nil || supervisor.pending != nil {
                logger.info("reload: booting generation \(g.number) (\(g.versions)) with \(g.target) worker(s)")
            }
            perform(supervisor.handle(.boot(g), now: Instant.now()))
        case .failed(let message, let errors):
            appErrors = errors
            if serving == nil && supervisor.pending == nil {
                logger.critical("cannot start: \(message); nothing to serve")
                exitCode = 1
                perform(supervisor.handle(.stop(graceful: false), now: Instant.now()))
            } else {
                reloadFailed(message)
            }
        }
    }

    // MARK: - Workers

    /// Starts one worker of `generation`: its control pipe, its scoreboard (an entry per
    /// application thread), the listeners and the applications' snapshots at fds 3, 4, 5...
    private func spawnWorker(_ generation: Generation) -> Result<pid_t, SpawnError> {
        guard let pipe = Spawn.pipe() else { return .failure(SpawnError(description: "cannot create a control pipe")) }
        guard let scoreboard = Scoreboard(name: "srv-worker", entries: Scoreboard.entries(threads: generation.settings.threads)) else {
            close(pipe.read); close(pipe.write)
            return .failure(SpawnError(description: "cannot create a scoreboard"))
        }
        let listenerFDs = workerListenerFDs()
        defer { for (fd, own) in listenerFDs where own { close(fd) } }
        var fds = [pipe.write, scoreboard.fd] + listenerFDs.map { $0.fd }
        // Each snapshot's content follows at the next descriptor: one per file, so two
        // mounts of one file share a dlopen handle and copies of a file under two names
        // are two applications, each with its own state.
        var apps = generation.apps
        var inherited: [String: CInt] = [:]
        for i in apps.indices {
            let snapshot = apps[i].snapshot
            let key = snapshot.source + "\0" + snapshot.hash
            let at = inherited[key] ?? 3 + CInt(fds.count)
            if inherited[key] == nil { inherited[key] = at; fds.append(snapshot.descriptor) }
            apps[i].snapshot = snapshot.inherited(at: at)
        }
        let encoder = JSONEncoder()
        var environment = [
            WorkerChannel.settingsVariable: String(decoding: (try? encoder.encode(generation.settings)) ?? Data(), as: UTF8.self),
            WorkerChannel.appsVariable: String(decoding: (try? encoder.encode(apps)) ?? Data(), as: UTF8.self),
            WorkerChannel.generationVariable: String(generation.number),
            WorkerChannel.listenersVariable: String(listeners.count),
            WorkerChannel.masterVariable: String(getpid()),
        ]
        for pair in generation.settings.environment {
            let eq = pair.firstIndex(of: "=")!
            environment[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        do {
            let pid = try Spawn.srv(["worker"], fds: fds,
                                    extraEnvironment: environment,
                                    removing: ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "SRV_INHERIT_LISTENERS", "SRV_INHERIT_REUSEPORT", "SRV_OLD_MASTER_PID", "SRV_INHERIT_METRICS_FD"])
            close(pipe.write)
            _ = fcntl(pipe.read, F_SETFL, O_NONBLOCK)
            links[pid] = WorkerLink(control: pipe.read, scoreboard: scoreboard)
            return .success(pid)
        } catch {
            close(pipe.read); close(pipe.write)
            return .failure(error as? SpawnError ?? SpawnError(description: "\(error)"))
        }
    }

    func readWorkerMessages() {
        for (pid, link) in links { readMessages(of: pid, link) }
    }

    private func readMessages(of pid: pid_t, _ link: WorkerLink) {
        var bytes: [UInt8] = []
        FileDescriptor.readAvailable(link.control, into: &bytes)
        guard !bytes.isEmpty else { return }
        link.pendingLine += String(decoding: bytes, as: UTF8.self)
        while let nl = link.pendingLine.firstIndex(of: "\n") {
            if let message = WorkerMessage.parse(link.pendingLine[..<nl]) {
                perform(supervisor.handle(.message(pid: pid, message), now: Instant.now()))
            }
            link.pendingLine = String(link.pendingLine[link.pendingLine.index(after: nl)...])
        }
    }

    /// Collects every exited child: workers, plugin checks, a new master (USR2).
    func reapChildren() {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { return }
            if pid == reexecChild {
                logger.error("the new master \(pid) (USR2) exited with \(Spawn.describe(status: status)); this master keeps serving")
                reexecChild = nil
                continue
            }
            if preparation?.reaped(pid: pid, status: status) == true { continue }
            guard let link = links[pid] else { continue }  // a cancelled check
            readMessages(of: pid, link)  // what it said last: a FAIL line arrives just before its exit
            links[pid] = nil
            metrics.workerExited(scoreboard: link.scoreboard, apps: apps(ofWorker: pid))
            perform(supervisor.handle(.exited(pid: pid, status: status, lastRequest: link.scoreboard.requestsInFlight.first),
                                      now: Instant.now()))
        }
    }

    /// The applications of a worker's generation, in the order of its scoreboard's slots.
    private func apps(ofWorker pid: pid_t) -> [WorkerApp] {
        supervisor.workers[pid].flatMap { supervisor.generations[$0.generation]?.apps } ?? []
    }

    private func renderMetrics() -> [UInt8] {
        let live = links.map { ServerMetrics.LiveWorker(pid: $0.key, scoreboard: $0.value.scoreboard, apps: apps(ofWorker: $0.key)) }
        return metrics.render(live: live, supervisor: supervisor, listeners: listeners)
    }

    /// --metrics-bind's socket: inherited from the old master after USR2, or opened.
    private func openMetricsListener() throws -> MetricsServer? {
        guard let text = settings.metricsBind else { return nil }
        let env = ProcessInfo.processInfo.environment
        if let fd = env["SRV_INHERIT_METRICS_FD"].flatMap(Int32.init), fd > 2 {
            let l = inheritedListener(fd: fd)
            return MetricsServer(listener: l)
        }
        guard case .success(let address) = BindAddress.parse(text) else { throw SpawnError(description: "invalid metrics-bind \(text)") }
        let l = try Listener.open(address, backlog: 64, umask: settings.umask)
        logger.info("metrics at \(l.boundDescription), path /metrics (--metrics-bind)")
        return MetricsServer(listener: l)
    }

    /// What each worker's scoreboard says, for --timeout.
    private func activity() -> [pid_t: Supervisor.Activity] {
        links.mapValues { Supervisor.Activity(heartbeat: $0.scoreboard.lastHeartbeat, oldestRequest: $0.scoreboard.requestsInFlight.first) }
    }

    private func openListeners() throws -> [Listener] {
        let env = ProcessInfo.processInfo.environment
        // Inherited from the old master (USR2) or from systemd (socket activation).
        if let n = env["SRV_INHERIT_LISTENERS"].flatMap(Int.init), n > 0 {
            // The old master's sockets: for --reuse-port they hold the address without
            // listening, and the new master's workers get sockets of their own as well.
            reusingPorts = env["SRV_INHERIT_REUSEPORT"] == "1"
            return (0..<n).map { inheritedListener(fd: 3 + Int32($0)) }
        }
        if let n = env["LISTEN_FDS"].flatMap(Int.init), n > 0,
           env["LISTEN_PID"].flatMap(pid_t.init) == getpid() {
            logger.info("using \(n) socket(s) from systemd (LISTEN_FDS)")
            return (0..<n).map { inheritedListener(fd: 3 + Int32($0)) }
        }
        return try settings.effectiveBinds.map { text -> Listener in
            guard case .success(let address) = BindAddress.parse(text) else { throw SpawnError(description: "invalid bind \(text)") }
            // With --reuse-port each worker gets a listening socket of its own (see
            // workerListenerFDs); the master's holds the address without listening.
            let reuse: Bool
            if case .tcp = address { reuse = settings.effectiveReusePort } else { reuse = false }
            if reuse { reusingPorts = true }
            return try Listener.open(address, backlog: settings.backlog, umask: settings.umask, reusePort: reuse,
                                     listening: !reuse)
        }
    }

    /// The runtime directory (the master's, 0700: it holds the status file), and, when the
    /// workers drop to --user, log files they can append to (as Gunicorn does).
    private func prepareRuntimeFiles() throws {
        let me = geteuid()
        try prepareRuntimeDirectory()
        removeSnapshotDirectoriesOfEarlierVersions()
        if me == 0, let uid = settings.workerUID {
            for path in [settings.errorLogFile, settings.accessLogFile].compactMap({ $0 }) where path != "-" {
                let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
                if fd >= 0 { _ = fchown(fd, uid, settings.workerGID ?? UInt32.max); close(fd) }
            }
        }
    }

    /// srv kept snapshot files in `snapshots/master-PID` of the runtime directory before
    /// they became memory files; those of masters that are gone are removed (a running
    /// master of that version keeps its own), then the directory once empty.
    private func removeSnapshotDirectoriesOfEarlierVersions() {
        let old = "\(runtimeDirectory)/snapshots"
        for name in Directory.names(in: old) ?? [] where name.hasPrefix("master-") {
            guard let pid = pid_t(name.dropFirst(7)), !Spawn.isRunning(pid) else { continue }
            try? FileManager.default.removeItem(atPath: "\(old)/\(name)")
        }
        rmdir(old)
    }

    /// Raises the soft limit of open files to the hard one (as nginx's worker_rlimit_nofile
    /// and Gunicorn do): each connection is a descriptor, and workers inherit the limit.
    /// - Returns: the limit now in force.
    private func raiseFileLimit() -> UInt {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return UInt(limit.rlim_cur)
    }

    /// The listeners a new worker gets. With --reuse-port, a TCP listener is a socket of
    /// the worker's own on the same address (SO_REUSEPORT), so the kernel spreads new
    /// connections across the workers; `own` marks those, which the master closes once the
    /// worker has them. Otherwise, and for Unix sockets and inherited ones, all share the
    /// master's socket.
    private func workerListenerFDs() -> [(fd: Int32, own: Bool)] {
        listeners.map { l in
            guard reusingPorts, case .tcp = l.address, case .success(let bound) = BindAddress.parse(l.boundDescription) else {
                return (l.fd, false)
            }
            do {
                return (try Listener.open(bound, backlog: settings.backlog, reusePort: true).fd, true)
            } catch {
                logger.warning("--reuse-port: \(error); this worker shares the master's socket")
                return (l.fd, false)
            }
        }
    }

    private func inheritedListener(fd: Int32) -> Listener {
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        if storage.ss_family == sa_family_t(AF_UNIX) {
            let path = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { p in
                    withUnsafeBytes(of: p.pointee.sun_path) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                }
            }
            return Listener(fd: fd, address: .unix(path: path))
        }
        let l = Listener(fd: fd, address: .tcp(host: "inherited", port: 0))
        if case .success(let a) = BindAddress.parse(l.boundDescription) { return Listener(fd: fd, address: a) }
        return l
    }

    // MARK: - USR2: a new master on the same listeners

    private func reexec() {
        guard supervisor.stopping == .no else { logger.warning("USR2: ignored, the master is stopping"); return }
        guard reexecChild == nil else { logger.warning("USR2: a new master is already starting"); return }
        var args = Array(CommandLine.arguments.dropFirst())
        if args.first == "serve" { args.removeFirst() }
        do {
            var fds = listeners.map { $0.fd }
            var environment = ["SRV_INHERIT_LISTENERS": String(listeners.count),
                               "SRV_INHERIT_REUSEPORT": reusingPorts ? "1" : "0",
                               "SRV_OLD_MASTER_PID": String(getpid())]
            if let m = metricsServer {
                environment["SRV_INHERIT_METRICS_FD"] = String(3 + fds.count)
                fds.append(m.listener.fd)
            }
            let pid = try Spawn.srv(["serve"] + args, executable: access(Spawn.installedExecutable, X_OK) == 0 ? Spawn.installedExecutable : Spawn.executable, fds: fds,
                                    extraEnvironment: environment,
                                    removing: ["LISTEN_FDS", "LISTEN_PID", "SRV_INHERIT_METRICS_FD"])
            reexecChild = pid
            logger.info("USR2: started new master \(pid) on the same listeners; this master retires once it is ready")
        } catch {
            logger.error("USR2: \(error)")
        }
    }

    private func writePidFile(_ path: String) {
        let text = "\(getpid())\n"
        if !FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) {
            logger.error("cannot write the pid file \(path); continuing without it")
        }
    }

    // MARK: - Status

    func writeStatusIfDue(force: Bool = false) {
        let now = Instant.now()
        guard statusWriter.isDue(now: now, force: force) else { return }
        let counters = links.mapValues { ArbiterStatus.WorkerCounters(served: $0.scoreboard.requestsServed, inFlight: $0.scoreboard.requestsInFlight) }
        let status = ArbiterStatus(masterPID: getpid(), startedAt: startedAt.timeIntervalSince1970,
                                   listeners: listeners.map { $0.boundDescription }, supervisor: supervisor,
                                   counters: counters, appErrors: appErrors, lastReloadError: lastReloadError, now: now)
        if settings.statusFile == nil, !runtimeDirectoryReady() { return }
        statusWriter.write(status)
    }

    /// The runtime directory is srv's before the status file (which names requests) goes
    /// there: made again when a cleaner removed it (logind at logout, a tmp cleaner), so
    /// that `srv status` keeps finding this master; refused, said once, when another user
    /// made it meanwhile.
    private func runtimeDirectoryReady() -> Bool {
        let missing = access(runtimeDirectory, F_OK) != 0
        do {
            try prepareRuntimeDirectory()
            if missing { logger.warning("the runtime directory \(runtimeDirectory) was removed while srv ran; made it again for the status file") }
            runtimeDirectoryProblemLogged = false
            return true
        } catch {
            if !runtimeDirectoryProblemLogged { logger.error("\(error); no status file (`srv status` cannot find this master) until it is srv's again") }
            runtimeDirectoryProblemLogged = true
            return false
        }
    }

    private func prepareRuntimeDirectory() throws {
        try RuntimeDirectory.prepare(runtimeDirectory, owner: geteuid(), mode: 0o700, exactMode: false, what: "runtime directory")
    }
}
