/// One set of workers serving one set of snapshots with one configuration. A reload is a
/// new generation: it boots beside the serving one, against a deadline, and is either
/// promoted (the old one retires) or fails with a reason (the old one keeps serving).
public struct Generation {
    public enum Phase: Equatable {
        /// Its workers start; it must be fully ready by `deadline` (--boot-timeout).
        case booting(deadline: Instant)
        /// The generation that serves.
        case serving
        /// It did not start: the reason is in the log and `srv status`.
        case failed(reason: String)
        /// A newer generation took over, or the master stops.
        case retired
    }

    /// An application's name and version as its descriptor says.
    public struct Descriptor: Equatable {
        public var name: String
        public var version: String
    }

    public let number: Int
    public let settings: Settings
    public let apps: [WorkerApp]
    /// How many workers it runs: --workers, changed by TTIN and TTOU.
    public var target: Int
    public var phase: Phase
    /// Each application's descriptor (mount → name and version), from the first worker
    /// that loaded it.
    public var descriptors: [String: Descriptor] = [:]

    public init(number: Int, settings: Settings, apps: [WorkerApp], phase: Phase) {
        self.number = number
        self.settings = settings
        self.apps = apps
        self.target = settings.workers
        self.phase = phase
    }

    /// "/=blog 1.2 (3f9c0a41d27e) /api=…", for logs and systemd's STATUS.
    public var versions: String {
        apps.map { app in
            let mount = app.prefix.isEmpty ? "/" : app.prefix
            guard let d = descriptors[app.prefix] else { return "\(mount)=\(app.snapshot.shortHash)" }
            return "\(mount)=\(d.name) \(d.version) (\(app.snapshot.shortHash))"
        }.joined(separator: " ")
    }

    /// The file of the application mounted at `mount`.
    func source(ofMount mount: String) -> String? {
        apps.first { $0.prefix == mount }?.snapshot.source
    }
}
