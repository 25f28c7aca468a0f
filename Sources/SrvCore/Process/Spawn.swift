import CSrvSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc

/// Starting srv's own executable as a child (a worker, a plugin check, a new master).
/// posix_spawn, never fork(): a forked Swift process with NIO threads is not safe.
public enum Spawn {
    /// The executable workers are started from: the file srv was started from while it is
    /// still the same file, else the running image itself (/proc/self/exe), so workers
    /// always run the master's own code even after a deploy replaced or deleted the file.
    public static var executable: String {
        var st = stat()
        if stat(installedExecutable, &st) == 0, UInt(st.st_dev) == installedIdentity.dev, UInt(st.st_ino) == installedIdentity.ino {
            return installedExecutable
        }
        return "/proc/self/exe"
    }

    private static let installedIdentity: (dev: UInt, ino: UInt) = {
        var st = stat()
        guard stat(installedExecutable, &st) == 0 else { return (0, 0) }
        return (UInt(st.st_dev), UInt(st.st_ino))
    }()

    /// The file this executable was started from, read at startup. USR2 starts the new
    /// master from it, so a deployed binary takes over.
    public static let installedExecutable: String = {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if n > 0 {
            let path = String(cString: buffer)
            return path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path
        }
        return CommandLine.arguments[0]
    }()

    /// Starts `srv ARGS...` with `fds` at 3.. and `extraEnvironment` added.
    public static func srv(_ arguments: [String], executable exe: String = Spawn.executable, fds: [Int32],
                           extraEnvironment: [String: String], removing: [String] = []) throws -> pid_t {
        var env = ProcessInfo.processInfo.environment
        for key in removing { env[key] = nil }
        for (k, v) in extraEnvironment { env[k] = v }
        // Swift's crash backtracer catches the plugin's SIGSEGV in the child and can even
        // return from raise(); srv reports crashes itself from the exit status.
        if env["SWIFT_BACKTRACE"] == nil { env["SWIFT_BACKTRACE"] = "enable=no" }
        let argv = ([installedExecutable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        let rc = fds.withUnsafeBufferPointer { fdp in
            srv_sys_spawn(exe, argv, envp, fdp.baseAddress, Int32(fds.count), &pid)
        }
        guard rc == 0 else { throw SpawnError(description: "cannot start \(exe): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// A pipe whose ends are close-on-exec (spawn's dup2 passes the child its end).
    public static func pipe() -> (read: Int32, write: Int32)? {
        var fds: [Int32] = [0, 0]
        guard srv_sys_pipe_cloexec(&fds) == 0 else { return nil }
        return (fds[0], fds[1])
    }

    /// Describes how a child ended: "exit code 3" or "signal SIGSEGV".
    /// Process `pid` exists (another user's too).
    public static func isRunning(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 || errno == EPERM }

    public static func describe(status: Int32) -> String {
        if status & 0x7f == 0 { return "exit code \((status >> 8) & 0xff)" }
        return "signal \(signalName(status & 0x7f))"
    }

    public static func signalName(_ s: Int32) -> String {
        let names: [Int32: String] = [
            SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGKILL: "SIGKILL", SIGTERM: "SIGTERM", SIGBUS: "SIGBUS",
            SIGFPE: "SIGFPE", SIGILL: "SIGILL", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGHUP: "SIGHUP",
            SIGPIPE: "SIGPIPE", SIGTRAP: "SIGTRAP", SIGSYS: "SIGSYS",
        ]
        return names[s] ?? "signal \(s)"
    }
}

public struct SpawnError: Error, CustomStringConvertible { public let description: String }
