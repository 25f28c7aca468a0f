#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc

/// `srv check`: validates a plugin in a child process, so a plugin that crashes or hangs in
/// its constructor or load hook is reported as such instead of taking srv down.
public enum PluginCheck {
    /// What a check found out about a valid plugin.
    public struct Report: Codable, Equatable {
        public var path: String
        public var valid: Bool
        public var name: String?
        public var version: String?
        public var abi: String?
        public var threadSafe: Bool?
        public var hash: String?
        public var reason: String?
        public var error: String?
    }

    /// A check running in a child (`srv check --in-process`): the master's loop tracks it
    /// like a worker (its pipe in the poll set, its exit reaped with the others, its
    /// deadline checked each turn), so a plugin that hangs while loading blocks nothing.
    public final class Running {
        public let path: String
        public let pid: pid_t
        public let deadline: Instant
        let timeout: Double
        let output: Int32
        var bytes: [UInt8] = []
        /// SIGKILL was sent because the deadline passed.
        public private(set) var timedOut = false

        init(path: String, pid: pid_t, output: Int32, timeout: Double) {
            self.path = path
            self.pid = pid
            self.output = output
            self.timeout = timeout
            deadline = Instant.now().adding(seconds: timeout)
        }

        deinit { close(output) }

        /// The pipe the report arrives on (poll it for input).
        public var fd: Int32 { output }

        /// Reads what the child wrote so far.
        public func readAvailable() { FileDescriptor.readAvailable(output, into: &bytes) }

        /// Kills the child when its deadline passed; true if it did.
        @discardableResult
        public func enforceDeadline(now: Instant) -> Bool {
            guard !timedOut, now > deadline else { return false }
            timedOut = true
            kill(pid, SIGKILL)
            return true
        }

        /// Kills the child (a newer reload replaced this one); it is still reaped.
        public func cancel() { kill(pid, SIGKILL) }

        /// The report, once the child was reaped with `status`.
        public func report(status: Int32) -> Report {
            readAvailable()
            if timedOut {
                return Report(path: path, valid: false, reason: "hung", error: PluginError.hung(path: path, seconds: timeout).description)
            }
            if status & 0x7f != 0 {
                let signal = Spawn.signalName(status & 0x7f)
                return Report(path: path, valid: false, reason: "crashed", error: PluginError.crashed(path: path, signal: signal).description)
            }
            if let report = try? JSONDecoder().decode(Report.self, from: Data(bytes)) { return report }
            return Report(path: path, valid: false, reason: "error", error: "\(path): the check process ended with \(Spawn.describe(status: status)) without a report")
        }
    }

    /// The descriptor a check process finds the snapshot at (after its report pipe, fd 3).
    static let contentFD: CInt = 4

    /// Starts the check of `snapshot` in a child, with a time limit. The child inherits the
    /// snapshot's content: it checks exactly the bytes workers would load, as the user and
    /// group they run as (`uid`, `gid`: no plugin code runs as root when workers do not).
    public static func start(_ snapshot: Snapshot, timeout: Double, uid: UInt32? = nil, gid: UInt32? = nil) -> Result<Running, SpawnError> {
        guard let pipe = Spawn.pipe() else { return .failure(SpawnError(description: "cannot create a pipe")) }
        let identity = (uid.map { ["--uid", String($0)] } ?? []) + (gid.map { ["--gid", String($0)] } ?? [])
        do {
            let pid = try Spawn.srv(["check", "--in-process", "--content-hash", snapshot.hash] + identity + [snapshot.source],
                                    fds: [pipe.write, snapshot.descriptor], extraEnvironment: [:])
            close(pipe.write)
            _ = fcntl(pipe.read, F_SETFL, O_NONBLOCK)
            return .success(Running(path: snapshot.source, pid: pid, output: pipe.read, timeout: timeout))
        } catch {
            close(pipe.read); close(pipe.write)
            return .failure(error as? SpawnError ?? SpawnError(description: "\(error)"))
        }
    }

    /// Checks the plugin at `path` in a child and waits for it (`srv check`, `srv
    /// --check-config`). `strict`: refuse a plugin others may write (PathTrust), as serving
    /// does without --insecure-plugins; `uid`, `gid`: the user the child loads it as.
    public static func run(path: String, timeout: Double = 10, strict: Bool = true,
                           uid: UInt32? = nil, gid: UInt32? = nil) -> Report {
        let snapshot: Snapshot
        do {
            snapshot = try Snapshot.take(of: path, strict: strict)
        } catch {
            let e = error as? PluginError
            return Report(path: path, valid: false, reason: e?.reason ?? "error", error: e?.description ?? "\(path): \(error)")
        }
        let check: Running
        switch start(snapshot, timeout: timeout, uid: uid, gid: gid) {
        case .success(let c): check = c
        case .failure(let e): return Report(path: path, valid: false, reason: "error", error: e.description)
        }
        var status: Int32 = 0
        while waitpid(check.pid, &status, WNOHANG) != check.pid {
            var pfd = pollfd(fd: check.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 50)
            check.readAvailable()
            check.enforceDeadline(now: Instant.now())
        }
        return check.report(status: status)
    }

    /// The child's half: loads the snapshot it inherited (of `path`, with SHA-256 `hash`)
    /// and writes the report as JSON to fd 3.
    public static func runInProcess(path: String, hash: String, uid: UInt32?, gid: UInt32?) -> Never {
        let report: Report
        do {
            if let problem = Identity.drop(uid: uid, gid: gid) {
                throw PluginError.unreadable(path: path, reason: "cannot switch to uid \(uid.map(String.init) ?? "-") gid \(gid.map(String.init) ?? "-") to load it: \(problem)")
            }
            let snapshot = Snapshot(source: path, hash: hash, descriptor: contentFD)
            _ = fcntl(contentFD, F_SETFD, FD_CLOEXEC)
            let plugin = try Plugin(file: snapshot.path, displayPath: path, snapshot: snapshot)
            try plugin.runLoadHook(mount: "", multithread: false, multiprocess: false)
            report = Report(path: path, valid: true, name: plugin.name, version: plugin.version,
                            abi: "\(plugin.abiMajor).\(plugin.abiMinor)", threadSafe: plugin.threadSafe, hash: snapshot.hash)
        } catch let e as PluginError {
            report = Report(path: path, valid: false, reason: e.reason, error: e.description)
        } catch {
            report = Report(path: path, valid: false, reason: "error", error: "\(path): \(error)")
        }
        let data = (try? JSONEncoder().encode(report)) ?? Data()
        data.withUnsafeBytes { _ = write(3, $0.baseAddress, $0.count) }
        // Skip atexit handlers and destructors of the plugin: the report is what counts.
        _exit(0)
    }
}
