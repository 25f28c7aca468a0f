#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc

/// What `srv status` shows, written by the master to a small JSON file twice a second.
public struct ArbiterStatus: Codable {
    /// An application: where it is mounted, its descriptor's name and version (once a
    /// worker loaded it), the file it came from and its snapshot's hash.
    public struct App: Codable {
        public var mount: String
        public var name: String?
        public var version: String?
        public var path: String
        public var hash: String
    }
    public struct AppError: Codable { public var mount: String; public var error: String }
    public struct WorkerStatus: Codable {
        public var pid: Int32
        public var generation: Int
        public var state: String
        public var age: Double
        public var requests: UInt64
        public var currentRequest: String?
        public var currentFor: Double?
    }

    public var masterPID: Int32
    public var startedAt: Double
    public var listeners: [String]
    public var generation: Int
    public var pendingGeneration: Int?
    public var apps: [App]
    public var appErrors: [AppError]
    public var lastReloadError: String?
    public var workers: [WorkerStatus]

    /// The status file's name in its master's runtime directory.
    public static func fileName(forMaster pid: pid_t) -> String { "master-\(pid).json" }

    /// True for `master-PID.json` whose master still runs (a signal may be refused, for
    /// another user's master, but it exists).
    public static func isStatusFileOfLiveMaster(_ name: String) -> Bool {
        guard name.hasPrefix("master-"), name.hasSuffix(".json"), let pid = pid_t(name.dropFirst(7).dropLast(5)) else { return false }
        return Spawn.isRunning(pid)
    }

    /// Human-readable form.
    public var text: String {
        var lines: [String] = []
        lines.append("master \(masterPID), up \(Self.duration(Date().timeIntervalSince1970 - startedAt)), listening on \(listeners.joined(separator: ", "))")
        lines.append("generation \(generation)\(pendingGeneration.map { " (generation \($0) booting)" } ?? "")")
        for a in apps {
            let named = a.name.map { "\($0) \(a.version ?? "")  " } ?? ""
            lines.append("  app \(a.mount)  \(named)\(a.path)  sha256 \(a.hash.prefix(12))")
        }
        for e in appErrors { lines.append("  app \(e.mount)  NOT LOADED: \(e.error)") }
        if let e = lastReloadError { lines.append("last reload failed: \(e)") }
        lines.append("workers:")
        lines.append("  PID      GEN  STATE     AGE       REQUESTS  CURRENT REQUEST")
        for w in workers {
            let current = w.currentRequest.map { "\($0) (\(String(fixed: w.currentFor ?? 0, decimals: 3)) s)" } ?? "-"
            lines.append("  " + [String(w.pid).padded(8), String(w.generation).padded(4), w.state.padded(9),
                                 Self.duration(w.age).padded(9), String(w.requests).padded(9), current].joined(separator: " "))
        }
        return lines.joined(separator: "\n")
    }

    static func duration(_ s: Double) -> String {
        let t = Int(max(s, 0).rounded())
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        if t < 60 { return "\(t)s" }
        if t < 3600 { return "\(t / 60)m\(two(t % 60))s" }
        return "\(t / 3600)h\(two(t / 60 % 60))m"
    }
}
