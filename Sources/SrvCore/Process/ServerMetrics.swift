import CSrvSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import Prometheus

/// The whole server's numbers for `--metrics-bind`, summed by the master over every worker
/// of every generation: what live workers counted (read from their scoreboards at each
/// scrape), what exited workers counted (folded in when they are reaped), and what the
/// master saw itself (exits, reloads, requests a dying worker never answered). A scrape
/// sees the same totals whichever worker would have answered it, and no counter goes down
/// when a worker crashes, is recycled or retires.
///
/// Requests are labelled by the mount of their application (`app="/blog"`; `app="-"` for
/// srv's own answers such as a 400 for a malformed request), their method and status class;
/// a request whose worker died while running it counts with `status="none"`.
public final class ServerMetrics {
    /// Requests the exited workers counted, by app label.
    private var exited: [String: RequestMetrics.Counters] = [:]
    /// Requests in flight when their worker died or was killed, by app label and method.
    private var unanswered: [String: [Int: UInt64]] = [:]
    public var workerExits: [Supervisor.ExitCause: UInt64] = [:]
    /// Reloads by result ("promoted", "failed").
    public var reloads: [String: UInt64] = ["promoted": 0, "failed": 0]

    public init() {}

    /// A live worker as a scrape reads it.
    public struct LiveWorker {
        public var pid: pid_t
        public var scoreboard: Scoreboard
        public var apps: [WorkerApp]
    }

    /// A reaped worker: its last numbers join the exited workers' totals.
    public func workerExited(scoreboard: Scoreboard, apps: [WorkerApp]) {
        for (slot, counters) in scoreboard.page.requestCounters().enumerated() where counters.requests > 0 {
            exited[Self.label(slot: slot, apps: apps), default: RequestMetrics.Counters()] += counters
        }
        for request in scoreboard.requestsInFlight {
            let method = RequestMetrics.methods.firstIndex { request.line.hasPrefix($0 + " ") } ?? RequestMetrics.methods.count - 1
            unanswered[Self.label(slot: request.slot, apps: apps), default: [:]][method, default: 0] += 1
        }
    }

    static func label(slot: Int, apps: [WorkerApp]) -> String {
        guard slot > 0, slot <= apps.count else { return "-" }
        let prefix = apps[slot - 1].prefix
        return prefix.isEmpty ? "/" : prefix
    }

    /// The text a scrape gets (Prometheus text format 0.0.4).
    public func render(live: [LiveWorker], supervisor: Supervisor, listeners: [Listener]) -> [UInt8] {
        var totals = exited
        var inFlight = 0, connections = 0
        for worker in live {
            for (slot, counters) in worker.scoreboard.page.requestCounters().enumerated() where counters.requests > 0 {
                totals[Self.label(slot: slot, apps: worker.apps), default: RequestMetrics.Counters()] += counters
            }
            inFlight += worker.scoreboard.requestsInFlight.count
            connections += max(worker.scoreboard.page.connectionsOpen, 0)
        }
        let apps = Set(totals.keys).union(unanswered.keys).sorted()

        let registry = PrometheusCollectorRegistry()
        for app in apps {
            let c = totals[app] ?? RequestMetrics.Counters()
            for m in RequestMetrics.methods.indices {
                for s in RequestMetrics.statusClasses.indices where c.requests(method: m, statusClass: s) > 0 {
                    registry.makeCounter(descriptor: Self.metric("srv_requests_total", Self.requestsHelp), labels: [("app", app), ("method", RequestMetrics.methods[m]), ("status", RequestMetrics.statusClasses[s])])
                        .increment(by: Int64(c.requests(method: m, statusClass: s)))
                }
                if let n = unanswered[app]?[m] {
                    registry.makeCounter(descriptor: Self.metric("srv_requests_total", Self.requestsHelp), labels: [("app", app), ("method", RequestMetrics.methods[m]), ("status", "none")])
                        .increment(by: Int64(n))
                }
            }
            registry.makeCounter(descriptor: Self.metric("srv_response_bytes_total", "Response body bytes sent, by application."), labels: [("app", app)])
                .increment(by: Int64(c.responseBytes))
        }
        registry.makeGauge(descriptor: Self.metric("srv_requests_in_flight", "Requests an application is running now.")).set(to: Double(inFlight))
        registry.makeGauge(descriptor: Self.metric("srv_connections_open", "Client connections the workers have open.")).set(to: Double(connections))
        for cause in Supervisor.ExitCause.allCases {
            registry.makeCounter(descriptor: Self.metric("srv_worker_exits_total", "Worker processes that ended, by cause."), labels: [("cause", cause.rawValue)])
                .increment(by: Int64(workerExits[cause] ?? 0))
        }
        for (result, n) in reloads.sorted(by: { $0.key < $1.key }) {
            registry.makeCounter(descriptor: Self.metric("srv_reloads_total", "Reloads (HUP, --reload), by result: promoted, or failed with the old generation serving."), labels: [("result", result)])
                .increment(by: Int64(n))
        }
        let serving = supervisor.currentGeneration
        registry.makeGauge(descriptor: Self.metric("srv_generation", "The number of the generation that serves (0 before the first)."))
            .set(to: Double(serving?.number ?? 0))
        registry.makeGauge(descriptor: Self.metric("srv_workers", "Worker processes running, booting ones included."))
            .set(to: Double(supervisor.workers.count))
        for app in serving?.apps ?? [] {
            let d = serving?.descriptors[app.prefix]
            registry.makeGauge(descriptor: Self.metric("srv_app_info", "One series per application the serving generation runs, with its descriptor's name and version and its file's SHA-256."),
                               labels: [("app", app.prefix.isEmpty ? "/" : app.prefix), ("name", d?.name ?? ""),
                                        ("version", d?.version ?? ""), ("hash", app.snapshot.hash)])
                .set(to: 1)
        }
        for l in listeners {
            guard case .tcp = l.address else { continue }
            let queued = srv_sys_listen_queue_length(l.fd)
            guard queued >= 0 else { continue }  // --reuse-port: each worker has its own queue
            registry.makeGauge(descriptor: Self.metric("srv_listen_queue_length", "Connections waiting in a listener's accept queue."), labels: [("listener", l.boundDescription)])
                .set(to: Double(queued))
        }
        for w in live {
            guard let rss = Self.residentBytes(of: w.pid) else { continue }
            registry.makeGauge(descriptor: Self.metric("srv_worker_resident_bytes", "Resident memory of each worker process."), labels: [("pid", String(w.pid))])
                .set(to: Double(rss))
        }
        var out = registry.emitToBuffer()
        Self.emitDurationHistogram(totals, apps: apps, into: &out)
        return out
    }

    /// A metric's name and help as swift-prometheus describes them (srv's names carry
    /// their unit already: `srv_requests_total`).
    static func metric(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    static let requestsHelp = "Requests answered, by application (mount), method and status class; status=\"none\": its worker died running it."

    /// swift-prometheus' histograms take one observation at a time; srv's buckets are
    /// counted in the workers' shared memory, so this family is written here, in the same
    /// text format.
    private static func emitDurationHistogram(_ totals: [String: RequestMetrics.Counters], apps: [String], into out: inout [UInt8]) {
        let name = "srv_request_duration_seconds"
        var text = "# HELP \(name) Time from a request's first byte to its response's last, by application.\n# TYPE \(name) histogram\n"
        for app in apps {
            guard let c = totals[app] else { continue }
            let label = "app=\"\(escaped(app))\""
            var cumulative: UInt64 = 0
            for (i, n) in c.bucketCounts.enumerated() {
                cumulative += n
                let le = i < RequestMetrics.buckets.count ? "\(RequestMetrics.buckets[i])" : "+Inf"
                text += "\(name)_bucket{\(label),le=\"\(le)\"} \(cumulative)\n"
            }
            text += "\(name)_sum{\(label)} \(c.durationSeconds)\n\(name)_count{\(label)} \(cumulative)\n"
        }
        out.append(contentsOf: text.utf8)
    }

    private static func escaped(_ value: String) -> String {
        value.replacing("\\", with: "\\\\").replacing("\"", with: "\\\"").replacing("\n", with: "\\n")
    }

    /// From /proc/PID/statm: its second number is the resident pages.
    private static func residentBytes(of pid: pid_t) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
