import CSrvSystem
import Foundation
import Glibc
import Logging

/// The master process, after Gunicorn's arbiter: it owns the listeners, starts and watches
/// the workers, and turns signals into actions. It is single-threaded on purpose (it
/// starts children) and never loads application code.
///
/// The whole life reads top to bottom: `run` → loop { signals, worker messages, `reapWorkers`,
/// `murderWorkers`, `manageWorkers`, `manageReload` }.
public final class Arbiter {
    /// One set of workers serving one set of snapshots with one configuration.
    final class Generation {
        let number: Int
        let settings: Settings
        let apps: [WorkerApp]
        var target: Int
        let startedAt = Date()
        /// Each application's name and version as its descriptor says (mount → both), from
        /// the first worker that loaded it.
        var descriptors: [String: (name: String, version: String)] = [:]
        init(number: Int, settings: Settings, apps: [WorkerApp]) {
            self.number = number
            self.settings = settings
            self.apps = apps
            self.target = settings.workers
        }
        var versions: String {
            apps.map { app in
                let mount = app.prefix.isEmpty ? "/" : app.prefix
                guard let d = descriptors[app.prefix] else { return "\(mount)=\(app.snapshot.shortHash)" }
                return "\(mount)=\(d.name) \(d.version) (\(app.snapshot.shortHash))"
            }.joined(separator: " ")
        }
    }

    final class Worker {
        let pid: pid_t
        let generation: Generation
        let control: Int32
        let scoreboard: Scoreboard
        let started = Date()
        var ready = false
        var pendingLine = ""
        /// The worker asked to be replaced (--max-requests), or is the replacement of `replaces`.
        var retireRequested = false
        var replaces: pid_t?
        /// TERM was sent at this time (graceful stop); KILL follows after graceful-timeout.
        var terminatedAt: Date?
        var abortedAt: Date?
        var failure: String?
        /// The mount whose application the booting worker is loading (LOADING), so that a
        /// crash or a hang while booting names the file.
        var loading: String?
        /// The file of the application this worker was loading, if it said.
        var loadingPath: String? { loading.flatMap { m in generation.apps.first { $0.prefix == m }?.snapshot.source } }
        /// Why this worker did not boot within --boot-timeout, naming the file it was loading.
        var hangReason: String {
            let seconds = generation.settings.bootTimeout
            if let path = loadingPath { return "\(PluginError.hung(path: path, seconds: seconds).description) (--boot-timeout \(seconds) s) [hung]" }
            return "worker \(pid) did not report ready within --boot-timeout \(seconds) s (a constructor or load hook hangs?) [hung]"
        }
        init(pid: pid_t, generation: Generation, control: Int32, scoreboard: Scoreboard) {
            self.pid = pid
            self.generation = generation
            self.control = control
            self.scoreboard = scoreboard
        }
    }

    enum Stopping { case no, graceful(deadline: Date), fast }

    public let configuration: ConfigurationSource
    var settings: Settings
    var listeners: [Listener] = []
    var current: Generation?
    var pending: Generation?
    var workers: [pid_t: Worker] = [:]
    var generationCounter = 0
    var signalFD: Int32 = -1
    var stopping = Stopping.no
    var bootFailures = 0
    var nextSpawnAllowed = Date.distantPast
    var lastReloadError: String?
    var appErrors: [String: String] = [:]
    var logger: Logger
    var reexecChild: pid_t?
    var lastStatusWrite = Date.distantPast
    let notify = SystemdNotify()
    var watcher: AppWatcher?
    let startedAt = Date()
    /// The status file and snapshots live here (RuntimeDirectory).
    let runtimeDirectory: String
    /// Where snapshots of all masters of this user live, and this master's own part of it:
    /// only this master adds or deletes files there.
    let snapshotRoot: String
    let snapshotDirectory: String
    /// The TCP listeners were opened for --reuse-port (decided once, at start): the
    /// master's own sockets hold the addresses without listening.
    var reusingPorts = false

    public init(configuration: ConfigurationSource, settings: Settings) {
        self.configuration = configuration
        self.settings = settings
        self.logger = ErrorLog.logger(label: "srv.master", level: Logger.Level(setting: settings.logLevel))
        runtimeDirectory = settings.runtimeDirectory ?? RuntimeDirectory.defaultPath
        snapshotRoot = settings.snapshotDirectory ?? "\(runtimeDirectory)/snapshots"
        snapshotDirectory = "\(snapshotRoot)/master-\(getpid())"
    }

    // MARK: - Life

    /// Runs the master until it stops; returns the process exit code.
    public func run() -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        _ = Spawn.executable  // remember where we came from before a deploy replaces it
        let handled = [SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGCHLD, SIGWINCH]
        signalFD = handled.withUnsafeBufferPointer { srv_sys_signalfd($0.baseAddress, Int32($0.count)) }
        guard signalFD >= 0 else { logger.critical("cannot create a signalfd"); return 1 }
        do {
            try prepareRuntimeFiles()
            listeners = try openListeners()
        } catch {
            logger.critical("\(error)")
            return 1
        }
        if let pidFile = settings.pidFile { writePidFile(pidFile) }
        let files = raiseFileLimit()
        logger.info("srv \(GatewayABI.serverVersion.dropFirst(4)) master \(getpid()) listening at \(listeners.map { l in BindAddress.parse(l.boundDescription).map { "http://\($0.explained)" }.get(or: l.boundDescription) }.joined(separator: ", "))\(settings.workerUID.map { "; workers run as uid \($0) gid \(settings.workerGID ?? $0)" } ?? ""); \(files) open files per process")
        guard let first = prepareGeneration(settings: settings, previous: nil) else {
            logger.critical("cannot start: \(lastReloadError ?? "no application could be loaded"); nothing to serve")
            cleanup()
            return 1
        }
        current = first
        if settings.reload { watcher = AppWatcher(settings: settings, logger: logger) }
        let initialBootOK = bootInitialGeneration(first)
        guard initialBootOK else {
            cleanup()
            return 1
        }
        notify.send("READY=1\nSTATUS=serving generation \(first.number): \(first.versions)\nMAINPID=\(getpid())")
        if let old = ProcessInfo.processInfo.environment["SRV_OLD_MASTER_PID"].flatMap({ pid_t($0) }), old > 1 {
            logger.info("took over from master \(old) (USR2); asking it to retire")
            kill(old, SIGTERM)
        }
        return loop()
    }

    private func loop() -> Int32 {
        for sig in signalsDuringBoot { handleSignal(sig) }
        signalsDuringBoot.removeAll()
        while true {
            var fds = [pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)]
            for w in workers.values { fds.append(pollfd(fd: w.control, events: Int16(POLLIN), revents: 0)) }
            if let watcher = watcher { fds.append(pollfd(fd: watcher.fd, events: Int16(POLLIN), revents: 0)) }
            _ = poll(&fds, nfds_t(fds.count), 200)
            while true {
                let sig = srv_sys_signalfd_read(signalFD)
                if sig <= 0 { break }
                handleSignal(sig)
            }
            readWorkerMessages()
            reapWorkers()
            if let watcher = watcher, watcher.poll() {
                logger.info("application files changed (--reload); reloading")
                reload()
            }
            switch stopping {
            case .no:
                murderWorkers()
                manageReload()
                manageWorkers()
            case .graceful(let deadline):
                if workers.isEmpty { return finish() }
                if Date() > deadline {
                    logger.warning("graceful timeout reached; killing \(workers.count) worker(s)")
                    for w in workers.values { kill(w.pid, SIGKILL) }
                    stopping = .fast
                }
            case .fast:
                if workers.isEmpty { return finish() }
            }
            writeStatusIfDue()
        }
    }

    private func finish() -> Int32 {
        logger.info("master \(getpid()) shutting down")
        cleanup()
        return 0
    }

    private func cleanup() {
        if let pidFile = settings.pidFile,
           let text = try? String(contentsOfFile: pidFile, encoding: .utf8), text.trimmingCharacters(in: .whitespacesAndNewlines) == String(getpid()) {
            unlink(pidFile)
        }
        // The status file and Unix socket files belong to the new master after USR2.
        if reexecChild == nil || settings.statusFile == nil { unlink(statusPath) }
        try? FileManager.default.removeItem(atPath: snapshotDirectory)
        if reexecChild == nil {
            for l in listeners { if case .unix(let path) = l.address { unlink(path) } }
        }
    }

    // MARK: - Signals

    func handleSignal(_ sig: Int32) {
        switch sig {
        case SIGCHLD:
            break  // reapWorkers runs on every turn of the loop
        case SIGHUP:
            logger.info("HUP: reloading")
            reload()
        case SIGTERM:
            if case .no = stopping {
                logger.info("TERM: stopping gracefully (up to \(settings.gracefulTimeout) s)")
                announceStopping()
                stopping = .graceful(deadline: Date().addingTimeInterval(settings.gracefulTimeout + 1))
                // The workers take what waits in the listen queues, then close their
                // copies; once the last copy is closed a new client is refused at once,
                // instead of being queued and reset when srv exits.
                for l in listeners { close(l.fd) }
                for w in workers.values { terminate(w) }
            }
        case SIGINT, SIGQUIT:
            logger.info("\(sig == SIGINT ? "INT" : "QUIT"): stopping now")
            announceStopping()
            stopping = .fast
            for w in workers.values { kill(w.pid, SIGQUIT) }
        case SIGTTIN:
            if let g = current {
                g.target += 1
                logger.info("TTIN: \(g.target) worker(s)")
            }
        case SIGTTOU:
            if let g = current, g.target > 1 {
                g.target -= 1
                logger.info("TTOU: \(g.target) worker(s)")
            }
        case SIGUSR1:
            logger.info("USR1: reopening log files")
            ErrorLog.shared.reopen()
            for w in workers.values { kill(w.pid, SIGUSR1) }
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

    // MARK: - Workers

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

    /// The runtime directory, the snapshot directories (owned by the workers' user, 0700),
    /// and, when the workers drop to --user, log files they can append to (as Gunicorn does).
    private func prepareRuntimeFiles() throws {
        let me = geteuid()
        let owner = settings.workerUID ?? me
        // Workers of another user must pass through the runtime directory to the snapshots.
        try RuntimeDirectory.prepare(runtimeDirectory, owner: me, mode: owner == me ? 0o700 : 0o711, exactMode: false,
                                     what: "runtime directory")
        try RuntimeDirectory.prepare(snapshotRoot, owner: owner, mode: 0o700, exactMode: true, what: "snapshot directory")
        removeSnapshotsOfDeadMasters()
        try RuntimeDirectory.prepare(snapshotDirectory, owner: owner, mode: 0o700, exactMode: true, what: "snapshot directory")
        if me == 0, let uid = settings.workerUID {
            for path in [settings.errorLogFile, settings.accessLogFile].compactMap({ $0 }) where path != "-" {
                let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
                if fd >= 0 { _ = fchown(fd, uid, settings.workerGID ?? UInt32.max); close(fd) }
            }
        }
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

    /// A master that was killed leaves its snapshots behind; the next one removes them.
    private func removeSnapshotsOfDeadMasters() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: snapshotRoot) else { return }
        for name in names where name.hasPrefix("master-") {
            guard let pid = pid_t(name.dropFirst(7)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            try? FileManager.default.removeItem(atPath: "\(snapshotRoot)/\(name)")
            logger.debug("removed the snapshots of master \(pid), which is gone")
        }
    }

    /// Deletes the snapshots no generation of this master can start workers from any more.
    private func removeUnreferencedSnapshots() {
        let kept = Set(([current, pending].compactMap { $0 }).flatMap { $0.apps.map { $0.snapshot.path } })
        let removed = Snapshot.removeUnreferenced(in: snapshotDirectory, keeping: kept)
        if removed > 0 { logger.debug("removed \(removed) snapshot(s) no generation uses") }
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

    /// Starts one worker of `generation`.
    @discardableResult
    func spawnWorker(_ generation: Generation) -> Worker? {
        guard let pipe = Spawn.pipe() else { logger.error("cannot create a control pipe"); return nil }
        guard let scoreboard = Scoreboard(name: "srv-worker") else {
            close(pipe.read); close(pipe.write)
            logger.error("cannot create a scoreboard page")
            return nil
        }
        let encoder = JSONEncoder()
        let settingsJSON = String(decoding: (try? encoder.encode(generation.settings)) ?? Data(), as: UTF8.self)
        let appsJSON = String(decoding: (try? encoder.encode(generation.apps)) ?? Data(), as: UTF8.self)
        do {
            var environment = [
                WorkerChannel.settingsVariable: settingsJSON,
                WorkerChannel.appsVariable: appsJSON,
                WorkerChannel.generationVariable: String(generation.number),
                WorkerChannel.listenersVariable: String(listeners.count),
            ]
            for pair in generation.settings.environment {
                let eq = pair.firstIndex(of: "=")!
                environment[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
            }
            let listenerFDs = workerListenerFDs()
            defer { for (fd, own) in listenerFDs where own { close(fd) } }
            let pid = try Spawn.srv(["worker"], fds: [pipe.write, scoreboard.fd] + listenerFDs.map { $0.fd },
                                    extraEnvironment: environment,
                                    removing: ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "SRV_INHERIT_LISTENERS", "SRV_INHERIT_REUSEPORT", "SRV_OLD_MASTER_PID"])
            close(pipe.write)
            _ = fcntl(pipe.read, F_SETFL, O_NONBLOCK)
            let w = Worker(pid: pid, generation: generation, control: pipe.read, scoreboard: scoreboard)
            workers[pid] = w
            logger.debug("booting worker \(pid) (generation \(generation.number))")
            return w
        } catch {
            close(pipe.read); close(pipe.write)
            bootFailures += 1
            let delay = min(0.1 * pow(2.0, Double(bootFailures - 1)), 10)
            nextSpawnAllowed = Date().addingTimeInterval(delay)
            lastSpawnError = "\(error)"
            logger.error("\(error); retrying in \(String(format: "%.1f", delay)) s")
            return nil
        }
    }

    /// Boots the first generation and waits for it; false when it cannot start at all.
    private func bootInitialGeneration(_ g: Generation) -> Bool {
        for _ in 0..<g.target { spawnWorker(g) }
        let deadline = Date().addingTimeInterval(settings.bootTimeout)
        while true {
            var fds = [pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)]
            for w in workers.values { fds.append(pollfd(fd: w.control, events: Int16(POLLIN), revents: 0)) }
            _ = poll(&fds, nfds_t(fds.count), 100)
            readWorkerMessages()
            reapWorkers(replace: false)
            while true {
                let sig = srv_sys_signalfd_read(signalFD)
                if sig <= 0 { break }
                if sig == SIGINT || sig == SIGTERM || sig == SIGQUIT {
                    for w in workers.values { kill(w.pid, SIGKILL) }
                    return false
                }
                if sig != SIGCHLD { signalsDuringBoot.append(sig) }
            }
            if let failed = workers.values.first(where: { $0.failure != nil }) ?? nil {
                logger.critical("worker failed to boot: \(failed.failure!)")
                killGeneration(g)
                return false
            }
            if let reason = lastBootDeath {
                logger.critical("worker failed to boot: \(reason)")
                killGeneration(g)
                return false
            }
            let booting = workers.values.filter { $0.generation === g }
            if !booting.isEmpty && booting.allSatisfy({ $0.ready }) {
                writeStatusIfDue(force: true)
                logger.info("generation \(g.number) ready: \(booting.count) worker(s) serving \(g.versions)")
                return true
            }
            if Date() > deadline {
                if let stuck = booting.first(where: { !$0.ready }) {
                    logger.critical("worker failed to boot: \(stuck.hangReason)")
                } else {
                    logger.critical("workers did not report ready within --boot-timeout \(settings.bootTimeout) s [hung]")
                }
                killGeneration(g)
                return false
            }
        }
    }

    var lastBootDeath: String?
    var lastSpawnError: String?
    /// HUP, TTIN, TTOU... that arrived while the first generation booted; handled after.
    var signalsDuringBoot: [Int32] = []

    private func killGeneration(_ g: Generation) {
        for w in workers.values where w.generation === g { kill(w.pid, SIGKILL) }
        var status: Int32 = 0
        for w in workers.values where w.generation === g {
            waitpid(w.pid, &status, 0)
            close(w.control)
            workers[w.pid] = nil
        }
    }

    func readWorkerMessages() {
        for w in workers.values { readMessages(from: w) }
    }

    private func readMessages(from w: Worker) {
        var bytes: [UInt8] = []
        FileDescriptor.readAvailable(w.control, into: &bytes)
        guard !bytes.isEmpty else { return }
        w.pendingLine += String(decoding: bytes, as: UTF8.self)
        while let nl = w.pendingLine.firstIndex(of: "\n") {
            if let message = WorkerMessage.parse(w.pendingLine[..<nl]) { handle(message, from: w) }
            w.pendingLine = String(w.pendingLine[w.pendingLine.index(after: nl)...])
        }
    }

    private func handle(_ message: WorkerMessage, from w: Worker) {
        switch message {
        case .ready:
            w.ready = true
            if w.generation === current { bootFailures = 0 }
            if let old = w.replaces, let retiring = workers[old] {
                logger.info("worker \(w.pid) replaces worker \(old) (max-requests)")
                terminate(retiring)
            }
        case .failed(let reason, let message):
            w.failure = "\(message) [\(reason)]"
        case .loading(let mount):
            w.loading = mount
        case .app(let mount, let name, let version):
            if w.generation.descriptors[mount] == nil { w.generation.descriptors[mount] = (name, version) }
        case .retire:
            guard !w.retireRequested, w.terminatedAt == nil, case .no = stopping else { return }
            w.retireRequested = true
            if let g = current, w.generation === g, let replacement = spawnWorker(g) {
                replacement.replaces = w.pid
            } else {
                terminate(w)
            }
        }
    }

    /// Collects exited children and replaces workers that died.
    func reapWorkers(replace: Bool = true) {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { return }
            if pid == reexecChild {
                logger.error("the new master \(pid) (USR2) exited with \(Spawn.describe(status: status)); this master keeps serving")
                reexecChild = nil
                continue
            }
            guard let w = workers[pid] else { continue }
            readMessages(from: w)  // what it said last: a FAIL line arrives just before its exit
            workers[pid] = nil
            close(w.control)
            let how = Spawn.describe(status: status)
            if w.terminatedAt != nil {
                logger.debug("worker \(pid) exited (\(how))")
                continue
            }
            if !w.ready {
                // The reason names of GATEWAY.md ("Loading"): a signal is a crash.
                let reason = w.failure ?? bootDeath(of: w, status: status)
                if w.generation === pending {
                    failReload(reason)
                } else {
                    lastBootDeath = reason
                    bootFailures += 1
                    let delay = min(0.1 * pow(2.0, Double(bootFailures - 1)), 10)
                    nextSpawnAllowed = Date().addingTimeInterval(delay)
                    if replace { logger.error("worker \(pid) failed to boot (\(reason)); retrying in \(String(format: "%.1f", delay)) s") }
                }
                continue
            }
            var what = ""
            if let started = w.scoreboard.requestStarted {
                let ran = Double(CoarseClock.now() - started) / 1e9
                what = " while serving \"\(w.scoreboard.currentRequest)\" (running \(String(format: "%.3f", ran)) s)"
            }
            if case .no = stopping, replace {
                logger.error("worker \(pid) died with \(how)\(what); replacing it")
            }
        }
    }

    /// Why a booting worker died: the application it was loading and the reason name.
    private func bootDeath(of w: Worker, status: Int32) -> String {
        let crashed = status & 0x7f != 0
        if let path = w.loadingPath {
            if crashed { return "\(PluginError.crashed(path: path, signal: Spawn.signalName(status & 0x7f)).description) [crashed]" }
            return "\(path): the worker loading it exited with \(Spawn.describe(status: status)) [error]"
        }
        return "worker \(w.pid) exited with \(Spawn.describe(status: status)) while booting [\(crashed ? "crashed" : "error")]"
    }

    /// Kills workers stuck in one request (or with a stuck event loop) past --timeout.
    func murderWorkers() {
        let now = CoarseClock.now()
        let timeout = UInt64(settings.timeout * 1e9)
        for w in workers.values where w.ready {
            if let aborted = w.abortedAt {
                if Date().timeIntervalSince(aborted) > 2 { kill(w.pid, SIGKILL) }
                continue
            }
            if let terminated = w.terminatedAt {
                if Date().timeIntervalSince(terminated) > w.generation.settings.gracefulTimeout + 2 {
                    logger.warning("worker \(w.pid) did not stop within graceful-timeout; killing it")
                    kill(w.pid, SIGKILL)
                    w.terminatedAt = Date.distantFuture
                }
                continue
            }
            var stuck: String?
            if let started = w.scoreboard.requestStarted {
                // In a request the request's own age decides (the heartbeat stops with it).
                if now > started, now - started > timeout {
                    stuck = "worker \(w.pid) timed out after \(String(format: "%.1f", Double(now - started) / 1e9)) s serving \"\(w.scoreboard.currentRequest)\" (--timeout \(settings.timeout) s); aborting it"
                }
            } else if now > w.scoreboard.lastHeartbeat, now - w.scoreboard.lastHeartbeat > timeout, w.scoreboard.lastHeartbeat > 0 {
                stuck = "worker \(w.pid) sent no heartbeat for \(String(format: "%.1f", Double(now - w.scoreboard.lastHeartbeat) / 1e9)) s (--timeout \(settings.timeout) s); aborting it"
            }
            if let stuck = stuck {
                logger.critical("\(stuck)")
                kill(w.pid, SIGABRT)
                w.abortedAt = Date()
            }
        }
        // Booting workers that never report.
        for w in workers.values where !w.ready && w.abortedAt == nil {
            if Date().timeIntervalSince(w.started) > w.generation.settings.bootTimeout {
                w.failure = w.hangReason
                logger.error("\(w.failure!)")
                kill(w.pid, SIGKILL)
                w.abortedAt = Date()
            }
        }
    }

    /// Keeps the current generation at its target size.
    func manageWorkers() {
        guard let g = current else { return }
        let live = workers.values.filter { $0.generation === g && $0.terminatedAt == nil && $0.abortedAt == nil && !$0.retireRequested }
        let serving = live.count
        if serving < g.target && Date() >= nextSpawnAllowed {
            for _ in serving..<g.target where spawnWorker(g) == nil { break }
        } else if serving > g.target {
            // TTOU: retire the oldest.
            for w in live.sorted(by: { $0.started < $1.started }).prefix(serving - g.target) { terminate(w) }
        }
    }

    func terminate(_ w: Worker) {
        guard w.terminatedAt == nil else { return }
        w.terminatedAt = Date()
        kill(w.pid, SIGTERM)
    }

    // MARK: - Reload: a new generation of processes

    /// HUP: re-read configuration, snapshot the plugins, boot a new generation next to the
    /// running one; `manageReload` promotes it once every new worker is ready.
    func reload() {
        guard case .no = stopping else { return }
        notify.send("RELOADING=1\nMONOTONIC_USEC=\(CoarseClock.now() / 1000)")
        var fresh = settings
        do {
            fresh = try configuration.load()
        } catch {
            logger.error("reload: the configuration is invalid, keeping the running settings: \(error)")
            lastReloadError = "configuration: \(error)"
            notify.send("READY=1\nSTATUS=reload refused: invalid configuration")
            return
        }
        if let p = pending {
            logger.info("reload: replacing generation \(p.number), which was still booting")
            killGeneration(p)
            pending = nil
        }
        guard let g = prepareGeneration(settings: fresh, previous: current) else {
            notify.send("READY=1\nSTATUS=reload failed; generation \(current?.number ?? 0) keeps serving")
            return
        }
        if fresh.effectiveBinds != settings.effectiveBinds {
            logger.warning("reload: bind addresses changed; listeners are kept for the life of the master (restart srv to change them)")
        }
        settings.logLevel = fresh.logLevel
        logger.logLevel = Logger.Level(setting: fresh.logLevel)
        pending = g
        logger.info("reload: booting generation \(g.number) (\(g.versions)) with \(g.target) worker(s)")
        for _ in 0..<g.target where spawnWorker(g) == nil {
            failReload("cannot start a worker: \(lastSpawnError ?? "unknown error")")
            return
        }
    }

    private func failReload(_ reason: String) {
        guard let g = pending else { return }
        logger.error("reload failed: \(reason); generation \(current?.number ?? 0) (\(current?.versions ?? "")) keeps serving")
        lastReloadError = reason
        killGeneration(g)
        pending = nil
        removeUnreferencedSnapshots()
        writeStatusIfDue(force: true)
        notify.send("READY=1\nSTATUS=reload failed: \(reason.prefix(200)); generation \(current?.number ?? 0) keeps serving")
    }

    func manageReload() {
        guard let g = pending else { return }
        let booting = workers.values.filter { $0.generation === g }
        if let failed = booting.first(where: { $0.failure != nil }) {
            failReload(failed.failure!)
            return
        }
        guard booting.count >= g.target, booting.allSatisfy({ $0.ready }) else { return }
        let old = current
        current = g
        pending = nil
        settings = g.settings
        lastReloadError = nil
        bootFailures = 0
        for w in workers.values where w.generation !== g { terminate(w) }
        removeUnreferencedSnapshots()
        writeStatusIfDue(force: true)
        logger.info("generation \(g.number) ready (\(g.versions)); retiring generation \(old?.number ?? 0)")
        notify.send("READY=1\nSTATUS=serving generation \(g.number): \(g.versions)")
        if let watcher = watcher { watcher.update(settings: g.settings) } else if g.settings.reload {
            watcher = AppWatcher(settings: g.settings, logger: logger)
        }
    }

    /// Snapshots every application of `settings`. With an apps directory, one broken
    /// application does not block the others: it keeps its previous build, or stays
    /// unmounted, and the log and `srv status` say why.
    func prepareGeneration(settings: Settings, previous: Generation?) -> Generation? {
        var apps: [WorkerApp] = []
        var errors: [String: String] = [:]
        let explicit = settings.mounts
        let discovered = settings.appsDir.map { AppsDirectory.scan($0, logger: logger) } ?? []
        for mount in explicit + discovered {
            let isDirectoryApp = !explicit.contains(mount)
            let old = previous?.apps.first(where: { $0.prefix == mount.prefix })
            do {
                let snapshot = try Snapshot.take(of: mount.path, into: snapshotDirectory)
                if let old = old, old.snapshot.hash == snapshot.hash {
                    apps.append(old)
                    continue
                }
                if isDirectoryApp || (previous == nil && explicit.count + discovered.count > 1) {
                    // Check a new or changed build in a child first, so it cannot sink the rest.
                    let report = PluginCheck.run(path: snapshot.path, snapshotDirectory: snapshotDirectory,
                                                 timeout: settings.bootTimeout)
                    if !report.valid {
                        let message = (report.error ?? "invalid").replacingSnapshot(snapshot.path, with: mount.path)
                            + (report.reason.map { " [\($0)]" } ?? "")
                        throw AppRefused(message: message)
                    }
                }
                apps.append(WorkerApp(prefix: mount.prefix, snapshot: snapshot))
            } catch {
                let message = "\(error)"
                errors[mount.prefix] = message
                if let old = old, isDirectoryApp {
                    logger.error("app \(mount.prefix.isEmpty ? "/" : mount.prefix): \(message) (keeping its previous build \(old.snapshot.shortHash))")
                    apps.append(old)
                } else if isDirectoryApp {
                    logger.error("app \(mount.prefix.isEmpty ? "/" : mount.prefix): \(message) (not mounted)")
                } else {
                    logger.error("\(message)")
                    lastReloadError = message
                    appErrors = errors
                    return nil
                }
            }
        }
        appErrors = errors
        if apps.isEmpty && settings.appsDir == nil { return nil }
        if let previous = previous, previous.apps == apps, previous.settings == settings, errors.isEmpty {
            logger.info("reload: nothing changed; starting a new generation anyway (HUP restarts workers)")
        }
        generationCounter += 1
        return Generation(number: generationCounter, settings: settings, apps: apps)
    }

    struct AppRefused: Error, CustomStringConvertible { let message: String; var description: String { message } }

    // MARK: - USR2: a new master on the same listeners

    private func reexec() {
        guard reexecChild == nil else { logger.warning("USR2: a new master is already starting"); return }
        var args = Array(CommandLine.arguments.dropFirst())
        if args.first == "serve" { args.removeFirst() }
        do {
            let pid = try Spawn.srv(["serve"] + args, executable: access(Spawn.installedExecutable, X_OK) == 0 ? Spawn.installedExecutable : Spawn.executable, fds: listeners.map { $0.fd },
                                    extraEnvironment: ["SRV_INHERIT_LISTENERS": String(listeners.count),
                                                       "SRV_INHERIT_REUSEPORT": reusingPorts ? "1" : "0",
                                                       "SRV_OLD_MASTER_PID": String(getpid())],
                                    removing: ["LISTEN_FDS", "LISTEN_PID"])
            reexecChild = pid
            logger.info("USR2: started new master \(pid) on the same listeners; this master retires once it is ready")
        } catch {
            logger.error("USR2: \(error)")
        }
    }

    // MARK: - Status

    var statusPath: String { settings.statusFile ?? "\(runtimeDirectory)/\(ArbiterStatus.fileName(forMaster: getpid()))" }

    private func writePidFile(_ path: String) {
        let text = "\(getpid())\n"
        if !FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) {
            logger.error("cannot write the pid file \(path); continuing without it")
        }
    }

    func writeStatusIfDue(force: Bool = false) {
        guard force || Date().timeIntervalSince(lastStatusWrite) >= 0.5 else { return }
        lastStatusWrite = Date()
        let now = CoarseClock.now()
        var status = ArbiterStatus(
            masterPID: getpid(), startedAt: startedAt.timeIntervalSince1970, listeners: listeners.map { $0.boundDescription },
            generation: current?.number ?? 0, pendingGeneration: pending?.number,
            apps: (current?.apps ?? []).map { app in
                let d = current?.descriptors[app.prefix]
                return ArbiterStatus.App(mount: app.prefix.isEmpty ? "/" : app.prefix, name: d?.name, version: d?.version,
                                         path: app.snapshot.source, hash: app.snapshot.hash)
            },
            appErrors: appErrors.map { ArbiterStatus.AppError(mount: $0.key.isEmpty ? "/" : $0.key, error: $0.value) }.sorted { $0.mount < $1.mount },
            lastReloadError: lastReloadError, workers: [])
        for w in workers.values.sorted(by: { $0.started < $1.started }) {
            var current: String?
            var runningFor: Double?
            if let started = w.scoreboard.requestStarted {
                current = w.scoreboard.currentRequest
                runningFor = Double(now > started ? now - started : 0) / 1e9
            }
            let state = w.terminatedAt != nil ? "retiring" : (w.ready ? "serving" : "booting")
            status.workers.append(ArbiterStatus.WorkerStatus(
                pid: w.pid, generation: w.generation.number, state: state, age: Date().timeIntervalSince(w.started),
                requests: w.scoreboard.requestsServed, currentRequest: current, currentFor: runningFor))
        }
        if let data = try? JSONEncoder().encode(status) {
            let temp = statusPath + ".tmp"
            // 0600: it names the requests in flight; root's `srv status` reads any master's.
            if FileManager.default.createFile(atPath: temp, contents: data, attributes: [.posixPermissions: 0o600]) { rename(temp, statusPath) }
        }
    }
}
