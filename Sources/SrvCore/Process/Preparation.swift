import Glibc
import Logging

/// The first step of a start or a reload: a snapshot of every application, and a check
/// in a child process (`PluginCheck.Running`) of each new or changed build that could
/// otherwise sink the rest: an apps-directory application, or one of several explicit
/// ones at the first start. The checks run while the master's loop goes on (signals,
/// workers, timeouts); when the last one ends, `outcome` says what the new generation
/// serves.
///
/// With an apps directory, one broken application does not block the others: it keeps
/// its previous build, or stays unmounted, and the log and `srv status` say why. A broken
/// explicit application (`--app`) fails the whole generation.
public final class Preparation {
    enum Entry {
        case ready(WorkerApp)
        case checking(mount: Settings.Mount, snapshot: Snapshot, old: WorkerApp?, isDirectoryApp: Bool, pid: pid_t)
        case refused(mount: Settings.Mount, message: String, old: WorkerApp?, isDirectoryApp: Bool)
    }

    public enum Outcome {
        /// The applications to serve, and the errors of those left out or kept at their
        /// previous build (mount → message).
        case apps([WorkerApp], errors: [String: String])
        /// An explicit application is broken, or nothing at all could be loaded.
        case failed(String, errors: [String: String])
    }

    public let settings: Settings
    let previous: [WorkerApp]
    private var entries: [Entry] = []
    private(set) var checks: [pid_t: PluginCheck.Running] = [:]

    /// Takes the snapshots and starts the checks. `previous` is the serving generation's
    /// applications: an unchanged build is reused without a check.
    public init(settings: Settings, previous: [WorkerApp]?, logger: Logger) {
        self.settings = settings
        self.previous = previous ?? []
        let explicit = settings.mounts
        let discovered = settings.appsDir.map { AppsDirectory.scan($0, logger: logger) } ?? []
        for mount in explicit + discovered {
            let isDirectoryApp = !explicit.contains(mount)
            let old = self.previous.first { $0.prefix == mount.prefix }
            do {
                let snapshot = try Snapshot.take(of: mount.path, strict: !settings.insecurePlugins)
                // The ELF header costs nothing to read: a file that is no plugin at all is
                // refused here, before srv binds or starts a process for it.
                try ELFCheck.validate(path: snapshot.path, display: mount.path)
                if let old = old, old.snapshot.hash == snapshot.hash {
                    entries.append(.ready(old))
                    continue
                }
                guard isDirectoryApp || (previous == nil && explicit.count + discovered.count > 1) else {
                    // A single explicit app is checked by its workers booting.
                    entries.append(.ready(WorkerApp(prefix: mount.prefix, snapshot: snapshot)))
                    continue
                }
                switch PluginCheck.start(snapshot, timeout: settings.bootTimeout, uid: settings.workerUID, gid: settings.workerGID) {
                case .success(let check):
                    checks[check.pid] = check
                    entries.append(.checking(mount: mount, snapshot: snapshot, old: old, isDirectoryApp: isDirectoryApp, pid: check.pid))
                case .failure(let error):
                    entries.append(.refused(mount: mount, message: error.description, old: old, isDirectoryApp: isDirectoryApp))
                }
            } catch {
                let message = (error as? PluginError)?.withReason ?? "\(error)"
                entries.append(.refused(mount: mount, message: message, old: old, isDirectoryApp: isDirectoryApp))
                if !isDirectoryApp, error is PluginError, explicitRefusal == nil {
                    explicitRefusal = "app \(mount.prefix.isEmpty ? "/" : mount.prefix): \(message)"
                }
            }
        }
    }

    /// Why an application named explicitly (`--app`, `--mount`) was refused before any
    /// process loaded it (a missing file, one that is no ELF shared object, one others may
    /// write): bad input, and at the first start srv stops there, before it binds. A check
    /// that could not be started is no such refusal.
    public private(set) var explicitRefusal: String?

    /// Every check has ended.
    public var isComplete: Bool { checks.isEmpty }

    /// The pipes of the running checks, for the loop's poll.
    public var descriptors: [Int32] { checks.values.map { $0.fd } }

    /// Reads the checks' output and kills those past their deadline.
    public func poll(now: Instant) {
        for check in checks.values {
            check.readAvailable()
            check.enforceDeadline(now: now)
        }
    }

    /// Records the end of a check child; false when `pid` is not one of this preparation's.
    public func reaped(pid: pid_t, status: Int32) -> Bool {
        guard let check = checks.removeValue(forKey: pid) else { return false }
        let report = check.report(status: status)
        guard let i = entries.firstIndex(where: { if case .checking(_, _, _, _, pid) = $0 { return true }; return false }),
              case .checking(let mount, let snapshot, let old, let isDirectoryApp, _) = entries[i] else { return true }
        if report.valid {
            entries[i] = .ready(WorkerApp(prefix: mount.prefix, snapshot: snapshot))
        } else {
            let message = (report.error ?? "invalid") + (report.reason.map { " [\($0)]" } ?? "")
            entries[i] = .refused(mount: mount, message: message, old: old, isDirectoryApp: isDirectoryApp)
        }
        return true
    }

    /// Kills the checks still running (a newer reload, or the master stops); their
    /// children are still reaped by the loop, which ignores them.
    public func cancel() {
        for check in checks.values { check.cancel() }
        checks.removeAll()
    }

    /// What the new generation serves; call once `isComplete`. Logs each refusal.
    public func outcome(logger: Logger) -> Outcome {
        var apps: [WorkerApp] = []
        var errors: [String: String] = [:]
        for entry in entries {
            switch entry {
            case .ready(let app):
                apps.append(app)
            case .checking(let mount, _, _, _, _):
                errors[mount.prefix] = "the check did not finish"
            case .refused(let mount, let message, let old, let isDirectoryApp):
                errors[mount.prefix] = message
                let name = mount.prefix.isEmpty ? "/" : mount.prefix
                if let old = old, isDirectoryApp {
                    logger.error("app \(name): \(message) (keeping its previous build \(old.snapshot.shortHash))")
                    apps.append(old)
                } else if isDirectoryApp {
                    logger.error("app \(name): \(message) (not mounted)")
                } else {
                    logger.error("\(message)")
                    return .failed(message, errors: errors)
                }
            }
        }
        if apps.isEmpty && settings.appsDir == nil { return .failed("no application could be loaded", errors: errors) }
        return .apps(apps, errors: errors)
    }
}
