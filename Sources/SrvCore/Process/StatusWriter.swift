#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc

/// Writes what `srv status` shows: the master's state as JSON, twice a second and at
/// once when a generation changes, atomically (a temporary file renamed over the old).
struct StatusWriter {
    let path: String
    static let interval = 0.5
    private var lastWrite: Instant?

    init(path: String) { self.path = path }

    /// True when a write is due at `now` (`force`: a generation changed).
    mutating func isDue(now: Instant, force: Bool) -> Bool {
        if !force, let last = lastWrite, now.seconds(since: last) < Self.interval { return false }
        lastWrite = now
        return true
    }

    func write(_ status: ArbiterStatus) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes  // `srv status --json` prints it as it is
        guard let data = try? encoder.encode(status) else { return }
        let temp = path + ".tmp"
        // 0600: it names the requests in flight; root's `srv status` reads any master's.
        if FileManager.default.createFile(atPath: temp, contents: data, attributes: [.posixPermissions: 0o600]) { rename(temp, path) }
    }
}

extension ArbiterStatus {
    /// What a worker's scoreboard says, for the status.
    struct WorkerCounters {
        var served: UInt64
        var inFlight: [Scoreboard.Request]
    }

    /// The status of a master whose supervisor is `supervisor`, at `now`.
    init(masterPID: pid_t, startedAt: Double, listeners: [String], supervisor: Supervisor,
         counters: [pid_t: WorkerCounters], appErrors: [String: String], lastReloadError: String?, now: Instant) {
        let current = supervisor.currentGeneration
        self.init(
            masterPID: masterPID, startedAt: startedAt, listeners: listeners,
            generation: current?.number ?? 0, pendingGeneration: supervisor.pending,
            apps: (current?.apps ?? []).map { app in
                let d = current?.descriptors[app.prefix]
                return App(mount: app.prefix.isEmpty ? "/" : app.prefix, name: d?.name, version: d?.version,
                           path: app.snapshot.source, hash: app.snapshot.hash)
            },
            appErrors: appErrors.map { AppError(mount: $0.key.isEmpty ? "/" : $0.key, error: $0.value) }.sorted { $0.mount < $1.mount },
            lastReloadError: lastReloadError, workers: [])
        for w in supervisor.workers.values.sorted(by: { $0.started < $1.started }) {
            let c = counters[w.pid]
            let oldest = c?.inFlight.first
            workers.append(WorkerStatus(
                pid: w.pid, generation: w.generation, state: Self.stateName(w.state), age: now.seconds(since: w.started),
                requests: c?.served ?? 0, currentRequest: oldest?.line,
                currentFor: oldest.map { now.seconds(since: Instant(nanoseconds: $0.started)) }))
        }
    }

    /// The names `srv status` shows for a worker's state.
    static func stateName(_ state: Supervisor.WorkerState) -> String {
        switch state {
        case .booting: return "booting"
        case .serving: return "serving"
        case .retiring, .quitting: return "retiring"
        case .aborting: return "aborting"
        case .killed: return "killed"
        }
    }
}
