#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import Logging

/// The master's bookkeeping of generations and workers, as a state machine: it takes
/// events (a worker started, said READY, exited; a tick of the clock with what the
/// scoreboards say; TTIN; a stop) and returns actions (spawn, signal, log, a generation
/// promoted or failed). It starts no process, reads no clock and sends no signal itself,
/// so unit tests drive it without processes; `Arbiter` carries out what it decides.
///
/// The rules, after Gunicorn's arbiter:
/// - a generation boots against a deadline (--boot-timeout) and is promoted once it runs
///   its target of ready workers; a worker of it that dies after READY is replaced within
///   that deadline; a worker that fails to boot fails the generation;
/// - the serving generation is kept at its target: dead workers are replaced (with a
///   backoff while they keep failing to boot), a worker past --max-requests is retired
///   once its replacement is ready;
/// - a request past --timeout, or an event loop without a heartbeat, gets its worker
///   aborted (SIGABRT, then SIGKILL 2 s later); a worker told to stop gets
///   --graceful-timeout, then SIGKILL;
/// - every wait has a deadline, a fast stop too.
public struct Supervisor {
    public enum WorkerState: Equatable {
        /// Started, not READY yet (loading its applications).
        case booting
        /// READY: it accepts connections.
        case serving
        /// Told to stop gracefully (TERM) at this instant.
        case retiring(since: Instant)
        /// Told to stop at once (QUIT, fast stop) at this instant.
        case quitting(since: Instant)
        /// Aborted (SIGABRT) for --timeout at this instant: the core or the crash handler
        /// gets 2 s, then SIGKILL.
        case aborting(since: Instant)
        /// SIGKILL sent; only the reap is left.
        case killed

        /// The master told it to go (TERM, QUIT or SIGKILL).
        var isStopping: Bool {
            switch self {
            case .retiring, .quitting, .killed: return true
            case .booting, .serving, .aborting: return false
            }
        }
    }

    public struct Worker: Equatable {
        public let pid: pid_t
        public let generation: Int
        public let started: Instant
        public var state: WorkerState = .booting
        /// It said READY at some point.
        public var ready = false
        /// The mount whose application it is loading (LOADING), so that a crash or a hang
        /// while booting names the file.
        public var loading: String?
        /// It reached --max-requests: it serves until `replacement` is ready.
        public var retireRequested = false
        /// The worker this one was started to replace (--max-requests).
        public var replaces: pid_t?
        /// Why it failed to boot (its FAIL message, or a hang).
        public var failure: String?

        public init(pid: pid_t, generation: Int, started: Instant) {
            self.pid = pid
            self.generation = generation
            self.started = started
        }

        /// Counts toward its generation's target: booting or serving, and not on its way out.
        var isLive: Bool {
            switch state {
            case .booting, .serving: return !retireRequested
            default: return false
            }
        }
    }

    /// What a worker's scoreboard says at a tick (monotonic ns; 0 = never).
    public struct Activity: Equatable {
        public var heartbeat: UInt64
        /// The oldest request in flight.
        public var oldestRequest: Scoreboard.Request?
        public init(heartbeat: UInt64, oldestRequest: Scoreboard.Request?) {
            self.heartbeat = heartbeat
            self.oldestRequest = oldestRequest
        }
    }

    public enum Stopping: Equatable {
        case no
        /// TERM: workers finish what they have until `deadline`, then get SIGKILL.
        case graceful(deadline: Instant)
        /// INT or QUIT, or the graceful deadline passed: SIGKILL at `deadline`.
        case fast(deadline: Instant)
    }

    public enum Event {
        /// A new generation, prepared (snapshots taken, plugins checked): boot it.
        case boot(Generation)
        case spawned(pid: pid_t, generation: Int, replacing: pid_t?)
        case spawnFailed(generation: Int, error: String)
        case message(pid: pid_t, WorkerMessage)
        /// A worker was reaped; `lastRequest` is what its scoreboard showed in flight.
        case exited(pid: pid_t, status: Int32, lastRequest: Scoreboard.Request?)
        /// TTIN (+1) or TTOU (-1).
        case resize(by: Int)
        /// TERM (graceful) or INT/QUIT.
        case stop(graceful: Bool)
        /// The clock moved: deadlines, --timeout, and keeping generations at their size.
        case tick(activity: [pid_t: Activity])
    }

    /// Why a worker process ended, for the metrics (srv_worker_exits_total).
    public enum ExitCause: String, CaseIterable {
        case crash, timeout, signal, reload, resize, stop
        case maxRequests = "max-requests"
        case bootFailure = "boot-failure"
    }

    public enum Action: Equatable {
        case spawn(generation: Int, replacing: pid_t?)
        /// A worker was reaped, for this reason.
        case exited(pid: pid_t, cause: ExitCause)
        case signal(pid: pid_t, Int32)
        case log(Logger.Level, String)
        /// `generation` serves now; `previous` (if any) retires.
        case promoted(generation: Int, previous: Int?)
        /// `generation` did not start; `fatal` when nothing serves (the first generation):
        /// the master stops.
        case failed(generation: Int, reason: String, fatal: Bool)
        /// Stopping, and the last worker is gone.
        case stopped
    }

    public private(set) var generations: [Int: Generation] = [:]
    public private(set) var current: Int?
    public private(set) var pending: Int?
    public private(set) var workers: [pid_t: Worker] = [:]
    public private(set) var stopping = Stopping.no
    /// Consecutive boot failures of the serving generation's workers, and when the next
    /// spawn is allowed (exponential backoff, 0.1 s to 10 s).
    public private(set) var bootFailures = 0
    public private(set) var nextSpawnAllowed = Instant(nanoseconds: 0)

    /// Seconds a worker gets between SIGABRT and SIGKILL, and a fast stop in all.
    public static let abortGrace = 2.0
    public static let fastStopGrace = 3.0

    public init() {}

    public var currentGeneration: Generation? { current.flatMap { generations[$0] } }
    /// A worker of this generation may be started: it serves or boots.
    public func wantsWorkers(of generation: Int) -> Bool { stopping == .no && (generation == current || generation == pending) }
    public var pendingGeneration: Generation? { pending.flatMap { generations[$0] } }

    // MARK: - Events

    public mutating func handle(_ event: Event, now: Instant) -> [Action] {
        var actions: [Action] = []
        switch event {
        case .boot(let g): boot(g, now: now, &actions)
        case .spawned(let pid, let number, let replacing):
            var w = Worker(pid: pid, generation: number, started: now)
            w.replaces = replacing
            workers[pid] = w
            actions.append(.log(.debug, "booting worker \(pid) (generation \(number))"))
        case .spawnFailed(let number, let error):
            backOff(now: now)
            if number == pending {
                fail(number, reason: "cannot start a worker: \(error)", now: now, &actions)
            } else {
                actions.append(.log(.error, "\(error); retrying in \(String(fixed: backoffDelay, decimals: 1)) s"))
            }
        case .message(let pid, let message): received(message, from: pid, now: now, &actions)
        case .exited(let pid, let status, let lastRequest): exited(pid, status: status, lastRequest: lastRequest, now: now, &actions)
        case .resize(let delta): resize(by: delta, &actions)
        case .stop(let graceful): stop(graceful: graceful, now: now, &actions)
        case .tick(let activity): tick(activity, now: now, &actions)
        }
        // Only the generations in use are kept.
        let inUse = Set(workers.values.map { $0.generation } + [current, pending].compactMap { $0 })
        for key in generations.keys where !inUse.contains(key) { generations[key] = nil }
        if stopping != .no && workers.isEmpty { actions.append(.stopped) }
        return actions
    }

    private mutating func boot(_ g: Generation, now: Instant, _ actions: inout [Action]) {
        guard stopping == .no else { return }
        if let p = pending {
            actions.append(.log(.info, "reload: replacing generation \(p), which was still booting"))
            retireGeneration(p, phase: .failed(reason: "replaced by generation \(g.number)"), now: now, &actions)
        }
        var g = g
        g.phase = .booting(deadline: now.adding(seconds: g.settings.bootTimeout))
        generations[g.number] = g
        pending = g.number
        for _ in 0..<g.target { actions.append(.spawn(generation: g.number, replacing: nil)) }
    }

    private mutating func received(_ message: WorkerMessage, from pid: pid_t, now: Instant, _ actions: inout [Action]) {
        guard var w = workers[pid] else { return }
        switch message {
        case .ready:
            if w.state == .booting { w.state = .serving }
            // Told to stop while booting: it drains what it accepted within --graceful-timeout.
            if case .retiring = w.state, !w.ready { w.state = .retiring(since: now) }
            w.ready = true
            workers[pid] = w
            if w.generation == current { bootFailures = 0 }
            if let old = w.replaces, let retiring = workers[old], w.state == .serving {
                actions.append(.log(.info, "worker \(pid) replaces worker \(old) (max-requests)"))
                retire(retiring, now: now, &actions)
            }
            promoteIfReady(now: now, &actions)
        case .failed(let reason, let message):
            w.failure = "\(message) [\(reason)]"
            workers[pid] = w
        case .loading(let mount):
            w.loading = mount
            workers[pid] = w
        case .app(let mount, let name, let version):
            if generations[w.generation]?.descriptors[mount] == nil {
                generations[w.generation]?.descriptors[mount] = Generation.Descriptor(name: name, version: version)
            }
        case .retire:
            guard !w.retireRequested, w.state == .serving, stopping == .no else { return }
            if w.generation == current {
                // The tick starts its replacement; it serves until that one is ready.
                w.retireRequested = true
                workers[pid] = w
            } else {
                retire(w, now: now, &actions)
            }
        }
    }

    private mutating func exited(_ pid: pid_t, status: Int32, lastRequest: Scoreboard.Request?, now: Instant,
                                 _ actions: inout [Action]) {
        guard let w = workers.removeValue(forKey: pid) else { return }
        let how = Spawn.describe(status: status)
        let generation = generations[w.generation]
        let inService = stopping == .no && (w.generation == current || w.generation == pending)
        actions.append(.exited(pid: pid, cause: exitCause(of: w, status: status)))
        if !w.ready, w.failure == nil, w.state.isStopping {
            // The master stopped it (TTOU, or its generation ended): not a failure to boot.
            actions.append(.log(.debug, "worker \(pid) exited (\(how)) while booting; the master stopped it"))
        } else if !w.ready {
            // The reason names of GATEWAY.md ("Loading"): a signal is a crash.
            let reason = w.failure ?? bootDeath(of: w, status: status, generation: generation)
            if w.generation == pending, stopping == .no {
                fail(w.generation, reason: reason, now: now, &actions)
            } else if w.generation == current, stopping == .no {
                backOff(now: now)
                actions.append(.log(.error, "worker \(pid) failed to boot (\(reason)); retrying in \(String(fixed: backoffDelay, decimals: 1)) s"))
            } else {
                actions.append(.log(.debug, "worker \(pid) exited (\(how)) while booting"))
            }
        } else {
            switch w.state {
            case .retiring, .quitting:
                actions.append(.log(.debug, "worker \(pid) exited (\(how))"))
            case .aborting where inService:
                actions.append(.log(.error, "worker \(pid) was aborted for --timeout and exited with \(how); replacing it"))
            case .serving, .booting, .aborting, .killed:
                if inService {
                    var what = ""
                    if let r = lastRequest {
                        what = " while serving \(r.described), running \(String(fixed: now.seconds(since: Instant(nanoseconds: r.started)), decimals: 3)) s"
                    }
                    actions.append(.log(.error, "worker \(pid) died with \(how)\(what); replacing it"))
                } else {
                    actions.append(.log(.debug, "worker \(pid) exited (\(how))"))
                }
            }
        }
        // A replacement that died leaves the retiring worker to be replaced again (tick).
    }

    private func exitCause(of w: Worker, status: Int32) -> ExitCause {
        if !w.ready && !w.state.isStopping { return .bootFailure }
        let sig = status & 0x7f
        let fault = [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS, SIGTRAP].contains(sig)
        switch w.state {
        case .aborting: return .timeout
        case _ where fault || sig == SIGABRT:
            return .crash  // the application's fault, even in a worker on its way out
        case .retiring, .quitting, .killed:
            if stopping != .no { return .stop }
            if w.retireRequested { return .maxRequests }
            return w.generation == current ? .resize : .reload
        case .booting, .serving:
            return sig != 0 ? .signal : .crash  // killed from outside, or exited by itself
        }
    }

    private mutating func resize(by delta: Int, _ actions: inout [Action]) {
        guard stopping == .no else { return }
        // During a reload both change: the new generation takes the new count when it is
        // promoted, and the serving one keeps it if the reload fails.
        var target: Int?
        for number in [current, pending].compactMap({ $0 }) {
            guard var g = generations[number] else { continue }
            g.target = max(1, g.target + delta)
            generations[number] = g
            target = g.target
        }
        if let t = target { actions.append(.log(.info, "\(delta > 0 ? "TTIN" : "TTOU"): \(t) worker(s)")) }
    }

    private mutating func stop(graceful: Bool, now: Instant, _ actions: inout [Action]) {
        let gracefulTimeout = currentGeneration?.settings.gracefulTimeout ?? pendingGeneration?.settings.gracefulTimeout ?? 30
        switch (stopping, graceful) {
        case (.no, true):
            stopping = .graceful(deadline: now.adding(seconds: gracefulTimeout + 1))
            abandonPending(now: now, &actions)
            for w in workers.values { retire(w, now: now, &actions) }
        case (.no, false), (.graceful, false):
            stopping = .fast(deadline: now.adding(seconds: Self.fastStopGrace))
            abandonPending(now: now, &actions)
            for w in workers.values { quit(w, now: now, &actions) }
        case (.graceful, true), (.fast, _):
            break
        }
    }

    private mutating func tick(_ activity: [pid_t: Activity], now: Instant, _ actions: inout [Action]) {
        switch stopping {
        case .graceful(let deadline) where now > deadline:
            actions.append(.log(.warning, "graceful timeout reached; killing \(workers.count) worker(s)"))
            stopping = .fast(deadline: now.adding(seconds: Self.fastStopGrace))
            for w in workers.values { kill(w, &actions) }
            return
        case .fast(let deadline) where now > deadline:
            for w in workers.values where w.state != .killed {
                actions.append(.log(.warning, "worker \(w.pid) did not stop; killing it"))
                kill(w, &actions)
            }
            return
        case .graceful, .fast:
            murder(activity, now: now, &actions)
            return
        case .no:
            break
        }
        murder(activity, now: now, &actions)
        if let p = pending, case .booting(let deadline)? = generations[p]?.phase, now > deadline {
            let stuck = workers.values.filter { $0.generation == p && !$0.ready }.min { $0.started < $1.started }
            let reason = stuck.map { hangReason(of: $0) }
                ?? "generation \(p) did not run \(generations[p]?.target ?? 0) ready worker(s) within --boot-timeout \(generations[p]?.settings.bootTimeout ?? 0) s [hung]"
            fail(p, reason: reason, now: now, &actions)
        }
        promoteIfReady(now: now, &actions)
        keepAtTarget(now: now, &actions)
    }

    // MARK: - Supervision

    /// --timeout, --boot-timeout and the deadlines of workers told to stop.
    private mutating func murder(_ activity: [pid_t: Activity], now: Instant, _ actions: inout [Action]) {
        for w in workers.values {
            guard let g = generations[w.generation] else { continue }
            switch w.state {
            case .killed:
                continue
            case .aborting(let since):
                if now.seconds(since: since) > Self.abortGrace { kill(w, &actions) }
            case .retiring(let since) where !w.ready:
                // A worker that finishes loading with TERM pending exits instead of saying
                // READY; one still loading this long after TERM never accepted anything.
                if now.seconds(since: since) > Self.abortGrace {
                    actions.append(.log(.debug, "worker \(w.pid) was told to stop while booting and is still loading; killing it"))
                    kill(w, &actions)
                }
            case .retiring(let since):
                if now.seconds(since: since) > g.settings.gracefulTimeout + 2 {
                    actions.append(.log(.warning, "worker \(w.pid) did not stop within --graceful-timeout \(g.settings.gracefulTimeout) s; killing it"))
                    kill(w, &actions)
                } else if let r = activity[w.pid]?.oldestRequest, let stuck = timedOut(w, request: r, timeout: g.settings.timeout, now: now) {
                    // Draining does not exempt a request from --timeout (as Gunicorn's
                    // murder_workers): it dies at the same age as in a serving worker.
                    abort(w, stuck, now: now, &actions)
                }
            case .quitting(let since):
                if now.seconds(since: since) > Self.fastStopGrace { kill(w, &actions) }
            case .booting:
                if now.seconds(since: w.started) > g.settings.bootTimeout {
                    var w = w
                    w.failure = hangReason(of: w)
                    workers[w.pid] = w
                    actions.append(.log(.error, w.failure!))
                    kill(w, &actions)
                }
            case .serving:
                guard let a = activity[w.pid] else { continue }
                let timeout = g.settings.timeout
                let at = now.nanoseconds
                if let r = a.oldestRequest {
                    // In a request the request's own age decides (the heartbeat may stop with it).
                    if let stuck = timedOut(w, request: r, timeout: timeout, now: now) { abort(w, stuck, now: now, &actions) }
                } else if a.heartbeat > 0, at > a.heartbeat, Double(at - a.heartbeat) / 1e9 > timeout {
                    abort(w, "worker \(w.pid) sent no heartbeat for \(String(fixed: Double(at - a.heartbeat) / 1e9, decimals: 1)) s (--timeout \(timeout) s); aborting it",
                          now: now, &actions)
                }
            }
        }
    }

    /// The log line for a request past --timeout, or nil.
    private func timedOut(_ w: Worker, request r: Scoreboard.Request, timeout: Double, now: Instant) -> String? {
        let ran = now.nanoseconds > r.started ? Double(now.nanoseconds - r.started) / 1e9 : 0
        guard ran > timeout else { return nil }
        return "worker \(w.pid) timed out after \(String(fixed: ran, decimals: 1)) s serving \(r.described) (--timeout \(timeout) s); aborting it"
    }

    private mutating func abort(_ w: Worker, _ why: String, now: Instant, _ actions: inout [Action]) {
        actions.append(.log(.critical, why))
        actions.append(.signal(pid: w.pid, SIGABRT))
        workers[w.pid]?.state = .aborting(since: now)
    }

    /// Keeps the serving generation, and a booting one, at their targets.
    private mutating func keepAtTarget(now: Instant, _ actions: inout [Action]) {
        for number in [current, pending].compactMap({ $0 }) {
            guard let g = generations[number] else { continue }
            let live = workers.values.filter { $0.generation == number && $0.isLive }
            if live.count < g.target {
                // The serving generation backs off while its workers keep failing to boot;
                // a booting one has its deadline instead.
                if number == current && now < nextSpawnAllowed { continue }
                // A worker past --max-requests gets its replacement first.
                var waiting = workers.values.filter { w in
                    w.generation == number && w.retireRequested && w.state == .serving && !workers.values.contains { $0.replaces == w.pid }
                }.sorted { $0.started < $1.started }
                for _ in live.count..<g.target {
                    let replacing = waiting.isEmpty ? nil : waiting.removeFirst().pid
                    actions.append(.spawn(generation: number, replacing: replacing))
                }
            } else if live.count > g.target {
                // TTOU: booting workers go first (they hold no connection), then the oldest.
                let order = live.sorted { a, b in
                    a.ready != b.ready ? !a.ready : a.started < b.started
                }
                for w in order.prefix(live.count - g.target) {
                    retire(w, now: now, &actions)
                }
            }
        }
    }

    private mutating func promoteIfReady(now: Instant, _ actions: inout [Action]) {
        guard stopping == .no, let p = pending, let g = generations[p], case .booting = g.phase else { return }
        let live = workers.values.filter { $0.generation == p && $0.isLive }
        guard live.count >= g.target, live.allSatisfy({ $0.ready }) else { return }
        let previous = current
        generations[p]?.phase = .serving
        current = p
        pending = nil
        bootFailures = 0
        nextSpawnAllowed = Instant(nanoseconds: 0)
        if let old = previous { retireGeneration(old, phase: .retired, now: now, &actions) }
        actions.append(.promoted(generation: p, previous: previous))
    }

    /// The booting generation did not start: its workers go, the serving one stays.
    private mutating func fail(_ number: Int, reason: String, now: Instant, _ actions: inout [Action]) {
        guard number == pending else { return }
        retireGeneration(number, phase: .failed(reason: reason), now: now, &actions)
        actions.append(.failed(generation: number, reason: reason, fatal: current == nil))
        if current == nil && stopping == .no {
            // Nothing serves and nothing will: the master stops, its booting workers with it.
            for w in workers.values where w.generation == number && !w.ready { kill(w, &actions) }
            stopping = .fast(deadline: now.adding(seconds: Self.fastStopGrace))
        }
    }

    private mutating func abandonPending(now: Instant, _ actions: inout [Action]) {
        guard let p = pending else { return }
        actions.append(.log(.info, "generation \(p) was still booting; abandoned"))
        retireGeneration(p, phase: .failed(reason: "abandoned: the master stops"), now: now, &actions)
    }

    /// Ends a generation: its booting workers are killed (they serve nothing), its ready
    /// ones stop gracefully (they may hold accepted connections).
    private mutating func retireGeneration(_ number: Int, phase: Generation.Phase, now: Instant, _ actions: inout [Action]) {
        generations[number]?.phase = phase
        if pending == number { pending = nil }
        if current == number { current = nil }
        for w in workers.values where w.generation == number { retire(w, now: now, &actions) }
    }

    /// TERM, whether it is ready or still booting: a worker sends READY just before its
    /// first accept, so one the master has not heard from yet may already hold a
    /// connection. One still loading has its signals blocked and exits instead of saying
    /// READY when it finds TERM pending; one still loading 2 s later is killed.
    private mutating func retire(_ w: Worker, now: Instant, _ actions: inout [Action]) {
        switch w.state {
        case .booting, .serving:
            actions.append(.signal(pid: w.pid, SIGTERM))
            workers[w.pid]?.state = .retiring(since: now)
        case .retiring, .quitting, .aborting, .killed: break
        }
    }

    private mutating func quit(_ w: Worker, now: Instant, _ actions: inout [Action]) {
        switch w.state {
        case .booting: kill(w, &actions)
        case .serving, .retiring:
            actions.append(.signal(pid: w.pid, SIGQUIT))
            workers[w.pid]?.state = .quitting(since: now)
        case .quitting, .aborting, .killed: break
        }
    }

    private mutating func kill(_ w: Worker, _ actions: inout [Action]) {
        guard w.state != .killed else { return }
        actions.append(.signal(pid: w.pid, SIGKILL))
        workers[w.pid]?.state = .killed
    }

    private var backoffDelay: Double { min(0.1 * pow(2.0, Double(max(bootFailures, 1) - 1)), 10) }

    private mutating func backOff(now: Instant) {
        bootFailures += 1
        nextSpawnAllowed = now.adding(seconds: backoffDelay)
    }

    // MARK: - Reasons

    /// Why a worker did not boot within --boot-timeout, naming the file it was loading.
    func hangReason(of w: Worker) -> String {
        let g = generations[w.generation]
        let seconds = g?.settings.bootTimeout ?? 0
        if let mount = w.loading, let path = g?.source(ofMount: mount) {
            return "\(PluginError.hung(path: path, seconds: seconds).description) (--boot-timeout \(seconds) s) [hung]"
        }
        return "worker \(w.pid) did not report ready within --boot-timeout \(seconds) s (a constructor or load hook hangs?) [hung]"
    }

    /// Why a booting worker died: the application it was loading and the reason name.
    func bootDeath(of w: Worker, status: Int32, generation: Generation?) -> String {
        let crashed = status & 0x7f != 0
        if let mount = w.loading, let path = generation?.source(ofMount: mount) {
            if crashed { return "\(PluginError.crashed(path: path, signal: Spawn.signalName(status & 0x7f)).description) [crashed]" }
            return "\(path): the worker loading it exited with \(Spawn.describe(status: status)) [error]"
        }
        return "worker \(w.pid) exited with \(Spawn.describe(status: status)) while booting [\(crashed ? "crashed" : "error")]"
    }
}
