import Foundation
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

    /// Runs the check of `path` in a child (`srv check --in-process`), with a time limit.
    public static func run(path: String, snapshotDirectory: String, timeout: Double = 10) -> Report {
        guard let pipe = Spawn.pipe() else {
            return Report(path: path, valid: false, reason: "error", error: "cannot create a pipe")
        }
        let pid: pid_t
        do {
            pid = try Spawn.srv(["check", "--in-process", "--snapshot-dir", snapshotDirectory, path], fds: [pipe.write],
                                extraEnvironment: [:])
        } catch {
            close(pipe.read); close(pipe.write)
            return Report(path: path, valid: false, reason: "error", error: "\(error)")
        }
        close(pipe.write)
        _ = fcntl(pipe.read, F_SETFL, O_NONBLOCK)
        var output = [UInt8]()
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(timeout)
        var exited = false
        while !exited {
            var pfd = pollfd(fd: pipe.read, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 50)
            FileDescriptor.readAvailable(pipe.read, into: &output)
            if waitpid(pid, &status, WNOHANG) == pid { exited = true; break }
            if Date() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                close(pipe.read)
                return Report(path: path, valid: false, reason: "hung", error: PluginError.hung(path: path, seconds: timeout).description)
            }
        }
        FileDescriptor.readAvailable(pipe.read, into: &output)
        close(pipe.read)
        if status & 0x7f != 0 {
            let signal = Spawn.signalName(status & 0x7f)
            return Report(path: path, valid: false, reason: "crashed", error: PluginError.crashed(path: path, signal: signal).description)
        }
        if let report = try? JSONDecoder().decode(Report.self, from: Data(output)) { return report }
        return Report(path: path, valid: false, reason: "error", error: "\(path): the check process ended with \(Spawn.describe(status: status)) without a report")
    }

    /// The child's half: loads the plugin here and writes the report as JSON to fd 3.
    public static func runInProcess(path: String, snapshotDirectory: String) -> Never {
        let report: Report
        do {
            let snapshot = try Snapshot.take(of: path, into: snapshotDirectory)
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
