import Glibc
import XCTest
@testable import SrvCore

/// The master's state machine driven by events alone: no process is started.
final class SupervisorTests: XCTestCase {
    var s = Supervisor()
    var t = Instant(nanoseconds: 1_000_000_000_000)
    var nextPID: pid_t = 100

    func settings(workers: Int = 2, bootTimeout: Double = 10, timeout: Double = 30, graceful: Double = 5) -> Settings {
        var st = Settings()
        st.mounts = [.init(prefix: "", path: "/apps/libapp.so")]
        st.workers = workers
        st.bootTimeout = bootTimeout
        st.timeout = timeout
        st.gracefulTimeout = graceful
        return st
    }

    func generation(_ n: Int, _ st: Settings) -> Generation {
        let snap = Snapshot(source: "/apps/libapp.so", hash: String(repeating: "\(n % 10)", count: 64), descriptor: -1)
        return Generation(number: n, settings: st, apps: [WorkerApp(prefix: "", snapshot: snap)], phase: .booting(deadline: t))
    }

    /// Handles `event` at the current time, then carries out every spawn the way the
    /// arbiter would (a new pid per spawn); returns all actions seen.
    @discardableResult
    func send(_ event: Supervisor.Event) -> [Supervisor.Action] {
        var all: [Supervisor.Action] = []
        var queue = s.handle(event, now: t)
        while !queue.isEmpty {
            let a = queue.removeFirst()
            all.append(a)
            if case .spawn(let g, let replacing) = a, s.wantsWorkers(of: g) {
                nextPID += 1
                queue += s.handle(.spawned(pid: nextPID, generation: g, replacing: replacing), now: t)
            }
        }
        return all
    }

    func advance(_ seconds: Double) { t = t.adding(seconds: seconds) }
    @discardableResult
    func tick(_ activity: [pid_t: Supervisor.Activity] = [:]) -> [Supervisor.Action] { send(.tick(activity: activity)) }
    func pids(of g: Int) -> [pid_t] { s.workers.values.filter { $0.generation == g }.map { $0.pid }.sorted() }
    func signals(_ actions: [Supervisor.Action]) -> [(pid_t, Int32)] {
        actions.compactMap { if case .signal(let p, let sig) = $0 { return (p, sig) }; return nil }
    }
    @discardableResult
    func readyAll(_ g: Int) -> [Supervisor.Action] {
        pids(of: g).flatMap { send(.message(pid: $0, .ready)) }
    }

    /// Boots generation 1 with two ready workers.
    func startServing() {
        send(.boot(generation(1, settings())))
        XCTAssertEqual(readyAll(1).filter { if case .promoted(1, nil) = $0 { return true }; return false }.count, 1)
        XCTAssertEqual(s.current, 1)
    }

    func testFirstGenerationIsPromotedWhenAllItsWorkersAreReady() {
        let actions = send(.boot(generation(1, settings(workers: 3))))
        XCTAssertEqual(actions.filter { if case .spawn(1, nil) = $0 { return true }; return false }.count, 3)
        XCTAssertNil(s.current)
        XCTAssertEqual(s.pending, 1)
        let p = pids(of: 1)
        send(.message(pid: p[0], .ready))
        send(.message(pid: p[1], .ready))
        XCTAssertNil(s.current, "promoted with a worker still booting")
        XCTAssertTrue(send(.message(pid: p[2], .ready)).contains(.promoted(generation: 1, previous: nil)))
        XCTAssertEqual(s.current, 1)
        XCTAssertNil(s.pending)
    }

    func testABootFailureOfTheFirstGenerationIsFatal() {
        send(.boot(generation(1, settings())))
        let p = pids(of: 1)
        send(.message(pid: p[0], .failed(reason: "load-failed", message: "app: no database")))
        let actions = send(.exited(pid: p[0], status: 3 << 8, lastRequest: nil))
        XCTAssertTrue(actions.contains(.failed(generation: 1, reason: "app: no database [load-failed]", fatal: true)))
        XCTAssertTrue(signals(actions).contains { $0 == (p[1], SIGKILL) }, "the other booting worker is killed")
        XCTAssertNotEqual(s.stopping, .no)
        XCTAssertTrue(send(.exited(pid: p[1], status: 9, lastRequest: nil)).contains(.stopped))
    }

    func testReloadPromotesTheNewGenerationAndRetiresTheOld() {
        startServing()
        let old = pids(of: 1)
        send(.boot(generation(2, settings())))
        XCTAssertEqual(s.pending, 2)
        let actions = readyAll(2)
        XCTAssertTrue(actions.contains(.promoted(generation: 2, previous: 1)))
        XCTAssertEqual(Set(signals(actions).filter { $0.1 == SIGTERM }.map { $0.0 }), Set(old))
        XCTAssertEqual(s.current, 2)
    }

    func testAFailedReloadKeepsTheServingGenerationAndStopsItsReadyWorkersGracefully() {
        startServing()
        send(.boot(generation(2, settings())))
        let p = pids(of: 2)
        send(.message(pid: p[0], .ready))
        send(.message(pid: p[1], .failed(reason: "load-failed", message: "boom")))
        let actions = send(.exited(pid: p[1], status: 3 << 8, lastRequest: nil))
        XCTAssertTrue(actions.contains(.failed(generation: 2, reason: "boom [load-failed]", fatal: false)))
        // The ready one may hold accepted connections: TERM, not KILL.
        XCTAssertTrue(signals(actions).contains { $0 == (p[0], SIGTERM) })
        XCTAssertEqual(s.current, 1)
        XCTAssertNil(s.pending)
        XCTAssertEqual(s.stopping, .no)
    }

    /// The stall of issue 15: a pending worker that dies after READY is replaced within
    /// the generation, which is then promoted.
    func testAPendingWorkerThatDiesAfterReadyIsReplacedAndTheReloadCompletes() {
        startServing()
        send(.boot(generation(2, settings())))
        let p = pids(of: 2)
        send(.message(pid: p[0], .ready))
        let died = send(.exited(pid: p[0], status: Int32(SIGSEGV), lastRequest: Scoreboard.Request(started: t.nanoseconds, line: "GET /crash", id: "3f9c0a41d27e-7")))
        XCTAssertTrue(died.contains { if case .log(_, let m) = $0 { return m.contains("\"GET /crash\" (request 3f9c0a41d27e-7)") }; return false }, "\(died)")
        XCTAssertFalse(died.contains { if case .failed = $0 { return true }; return false }, "a request's crash is not a boot failure")
        advance(0.2)
        let spawned = tick().filter { if case .spawn(2, _) = $0 { return true }; return false }
        XCTAssertEqual(spawned.count, 1, "the dead pending worker is replaced")
        XCTAssertTrue(readyAll(2).contains(.promoted(generation: 2, previous: 1)))
    }

    func testAReloadThatIsNotReadyByItsDeadlineRollsBack() {
        startServing()
        send(.boot(generation(2, settings(bootTimeout: 5))))
        let p = pids(of: 2)
        send(.message(pid: p[0], .ready))
        send(.message(pid: p[1], .loading(mount: "")))
        advance(5.5)
        let actions = tick()
        let failed = actions.compactMap { a -> String? in if case .failed(2, let r, false) = a { return r }; return nil }
        XCTAssertEqual(failed.count, 1)
        XCTAssertTrue(failed[0].contains("/apps/libapp.so") && failed[0].hasSuffix("[hung]"), failed[0])
        XCTAssertEqual(s.current, 1)
        XCTAssertNil(s.pending)
    }

    func testTTINDuringAReloadAppliesToTheNewGeneration() {
        startServing()
        send(.boot(generation(2, settings())))
        send(.resize(by: 1))
        XCTAssertEqual(tick().filter { if case .spawn(2, _) = $0 { return true }; return false }.count, 1)
        XCTAssertFalse(readyAll(2).isEmpty)
        XCTAssertEqual(s.current, 2)
        XCTAssertEqual(s.currentGeneration?.target, 3)
        XCTAssertEqual(pids(of: 2).count, 3)
    }

    func testTTOUDuringAReloadStopsABootingWorkerWithoutFailingTheReload() {
        startServing()
        send(.boot(generation(2, settings())))
        let p2 = pids(of: 2)
        send(.message(pid: p2[1], .ready))
        send(.resize(by: -1))
        let actions = tick()
        XCTAssertTrue(signals(actions).contains { $0 == (p2[0], SIGTERM) }, "the booting worker goes, not the ready one")
        XCTAssertFalse(signals(actions).contains { $0.0 == p2[1] })
        let death = send(.exited(pid: p2[0], status: SIGKILL, lastRequest: nil))
        XCTAssertFalse(death.contains { if case .failed = $0 { return true }; return false },
                       "a worker the master stopped did not fail to boot")
        XCTAssertEqual(s.pending, 2)
        tick()
        XCTAssertEqual(s.current, 2, "one ready worker is the new target")
        XCTAssertEqual(s.currentGeneration?.target, 1)
    }

    func testAWorkerToldToStopWhileBootingDrainsIfReadyAndIsKilledIfItNeverLoads() {
        startServing()
        send(.boot(generation(2, settings(bootTimeout: 10, graceful: 30))))
        let p2 = pids(of: 2)
        // A HUP replaces generation 2 before the master read either worker's READY.
        send(.boot(generation(3, settings(bootTimeout: 10))))
        // One had sent READY (and may hold a connection): it gets its --graceful-timeout.
        // The other is still loading: once loaded it finds TERM pending and exits unserved.
        send(.message(pid: p2[0], .ready))
        advance(1)
        XCTAssertTrue(signals(tick()).filter { $0.1 == SIGKILL }.isEmpty)
        advance(1.5)
        let late = signals(tick())
        XCTAssertTrue(late.contains { $0 == (p2[1], SIGKILL) }, "still loading 2 s after TERM: killed")
        XCTAssertFalse(late.contains { $0.0 == p2[0] }, "the one that said READY drains")
        advance(20)
        XCTAssertFalse(signals(tick()).contains { $0.0 == p2[0] }, "within its --graceful-timeout 30 s")
        XCTAssertTrue(signals(send(.exited(pid: p2[1], status: SIGKILL, lastRequest: nil))).isEmpty)
    }

    func testAHUPDuringAReloadReplacesTheBootingGeneration() {
        startServing()
        send(.boot(generation(2, settings())))
        let p2 = pids(of: 2)
        send(.message(pid: p2[0], .ready))
        let actions = send(.boot(generation(3, settings())))
        XCTAssertTrue(signals(actions).contains { $0 == (p2[0], SIGTERM) }, "a ready worker of the replaced generation drains")
        XCTAssertTrue(signals(actions).contains { $0 == (p2[1], SIGTERM) }, "a booting one is told to stop too (it may have sent READY already)")
        XCTAssertEqual(s.pending, 3)
        XCTAssertTrue(readyAll(3).contains(.promoted(generation: 3, previous: 1)))
    }

    func testARequestPastTimeoutAbortsItsWorkerWhateverElseRuns() {
        send(.boot(generation(1, settings(timeout: 2))))
        readyAll(1)
        let p = pids(of: 1)
        let started = t.nanoseconds
        advance(1)
        // The heartbeat is fresh (other requests keep the worker's loop busy): the age of
        // the oldest request in flight decides.
        let busy = Supervisor.Activity(heartbeat: t.nanoseconds, oldestRequest: Scoreboard.Request(started: started, line: "GET /sleep"))
        XCTAssertTrue(signals(tick([p[0]: busy])).isEmpty, "1 s is within --timeout 2")
        advance(1.5)
        let late = Supervisor.Activity(heartbeat: t.nanoseconds, oldestRequest: Scoreboard.Request(started: started, line: "GET /sleep"))
        let actions = tick([p[0]: late, p[1]: Supervisor.Activity(heartbeat: t.nanoseconds, oldestRequest: nil)])
        XCTAssertEqual(signals(actions).map { $0.0 }, [p[0]])
        XCTAssertEqual(signals(actions).first?.1, SIGABRT)
        XCTAssertTrue(actions.contains { if case .log(.critical, let m) = $0 { return m.contains("GET /sleep") && m.contains("--timeout 2") }; return false })
        advance(Supervisor.abortGrace + 0.5)
        XCTAssertTrue(signals(tick()).contains { $0 == (p[0], SIGKILL) }, "SIGKILL follows the abort")
    }

    func testARetiringWorkersRequestPastTimeoutIsAbortedTooAndItsExitSaysTimeout() {
        send(.boot(generation(1, settings(timeout: 2, graceful: 30))))
        readyAll(1)
        let old = pids(of: 1)
        let started = t.nanoseconds
        send(.boot(generation(2, settings(timeout: 2, graceful: 30))))
        readyAll(2)  // generation 1 retires (TERM), one of its workers in a request
        XCTAssertEqual(s.current, 2)
        advance(2.5)
        let stuck = Supervisor.Activity(heartbeat: t.nanoseconds, oldestRequest: Scoreboard.Request(started: started, line: "GET /sleep"))
        let actions = tick([old[0]: stuck])
        XCTAssertTrue(signals(actions).contains { $0 == (old[0], SIGABRT) }, "--graceful-timeout 30 does not outlast --timeout 2: \(actions)")
        let exit = send(.exited(pid: old[0], status: SIGABRT, lastRequest: stuck.oldestRequest))
        XCTAssertTrue(exit.contains(.exited(pid: old[0], cause: .timeout)), "\(exit)")
        let other = send(.exited(pid: old[1], status: 0, lastRequest: nil))
        XCTAssertTrue(other.contains(.exited(pid: old[1], cause: .reload)), "\(other)")
    }

    func testMaxRequestsRetiresAWorkerOnlyOnceItsReplacementIsReady() {
        startServing()
        let p = pids(of: 1)
        send(.message(pid: p[0], .retire))
        let spawns = tick().compactMap { a -> pid_t? in if case .spawn(1, let r) = a { return r }; return nil }
        XCTAssertEqual(spawns, [p[0]])
        XCTAssertTrue(signals(tick()).isEmpty, "the old one serves until then")
        let replacement = pids(of: 1).first { !p.contains($0) }!
        XCTAssertTrue(signals(send(.message(pid: replacement, .ready))).contains { $0 == (p[0], SIGTERM) })
    }

    func testAServingWorkerThatCrashesIsReplacedAndABootLoopBacksOff() {
        startServing()
        let p = pids(of: 1)
        send(.exited(pid: p[0], status: Int32(SIGSEGV), lastRequest: nil))
        XCTAssertEqual(tick().filter { if case .spawn(1, nil) = $0 { return true }; return false }.count, 1)
        // The replacement fails to boot: the next one waits (0.1 s, then 0.2 s...).
        let r = pids(of: 1).first { !p.contains($0) }!
        send(.exited(pid: r, status: 3 << 8, lastRequest: nil))
        XCTAssertTrue(tick().filter { if case .spawn = $0 { return true }; return false }.isEmpty)
        advance(0.15)
        XCTAssertEqual(tick().filter { if case .spawn = $0 { return true }; return false }.count, 1)
    }

    func testGracefulStopHasADeadlineThenKills() {
        startServing()
        let p = pids(of: 1)
        let actions = send(.stop(graceful: true))
        XCTAssertEqual(Set(signals(actions).map { $0.0 }), Set(p))
        XCTAssertTrue(signals(actions).allSatisfy { $0.1 == SIGTERM })
        XCTAssertTrue(send(.boot(generation(2, settings()))).isEmpty, "no reload while stopping")
        advance(7)
        XCTAssertTrue(signals(tick()).allSatisfy { $0.1 == SIGKILL })
        send(.exited(pid: p[0], status: 9, lastRequest: nil))
        XCTAssertTrue(send(.exited(pid: p[1], status: 9, lastRequest: nil)).contains(.stopped))
    }

    func testAFastStopHasADeadlineToo() {
        startServing()
        let p = pids(of: 1)
        XCTAssertTrue(signals(send(.stop(graceful: false))).allSatisfy { $0.1 == SIGQUIT })
        advance(Supervisor.fastStopGrace + 0.5)
        XCTAssertEqual(Set(signals(tick()).filter { $0.1 == SIGKILL }.map { $0.0 }), Set(p))
    }

    func testTERMDuringAReloadAbandonsItAndStopsEveryWorker() {
        startServing()
        send(.boot(generation(2, settings())))
        let booting = pids(of: 2)
        let actions = send(.stop(graceful: true))
        XCTAssertNil(s.pending)
        for pid in booting { XCTAssertTrue(signals(actions).contains { $0 == (pid, SIGTERM) }, "booting workers stop gracefully too") }
        for pid in pids(of: 1) { XCTAssertTrue(signals(actions).contains { $0 == (pid, SIGTERM) }) }
    }

    func testBootingWorkerPastBootTimeoutIsKilledNamingTheFile() {
        send(.boot(generation(1, settings(workers: 1, bootTimeout: 3))))
        let p = pids(of: 1)[0]
        send(.message(pid: p, .loading(mount: "")))
        advance(3.5)
        let actions = tick()
        XCTAssertTrue(signals(actions).contains { $0 == (p, SIGKILL) })
        let fatal = actions + send(.exited(pid: p, status: 9, lastRequest: nil))
        XCTAssertEqual(fatal.filter { if case .failed = $0 { return true }; return false }.count, 1)
        XCTAssertTrue(fatal.contains { if case .failed(1, let r, true) = $0 { return r.contains("/apps/libapp.so") && r.hasSuffix("[hung]") }; return false })
    }

    func testStatusShowsEachWorkersStateAndOldestRequest() {
        startServing()
        let p = pids(of: 1)
        let counters = [p[0]: ArbiterStatus.WorkerCounters(served: 7, inFlight: [Scoreboard.Request(started: t.nanoseconds, line: "GET /a")])]
        advance(1.5)
        let status = ArbiterStatus(masterPID: 1, startedAt: 0, listeners: ["127.0.0.1:8000"], supervisor: s, counters: counters,
                                   appErrors: [:], lastReloadError: nil, now: t)
        XCTAssertEqual(status.generation, 1)
        XCTAssertEqual(status.workers.count, 2)
        let w = status.workers.first { $0.pid == p[0] }!
        XCTAssertEqual(w.requests, 7)
        XCTAssertEqual(w.currentRequest, "GET /a")
        XCTAssertEqual(w.currentFor ?? 0, 1.5, accuracy: 0.01)
        XCTAssertEqual(w.state, "serving")
    }
}
