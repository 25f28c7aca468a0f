import Glibc
import XCTest
@testable import SrvCore
import SrvGateway

/// The pure logic behind deploying srv: trusted proxy lists, bind addresses, the config
/// file's lines, the runtime directory's checks and snapshot reuse.
final class DeployTests: XCTestCase {
    func testAddressListMatchesAddressesRangesAndUnix() throws {
        let list = try AddressList(parsing: "10.0.0.0/8, 192.168.1.7, fd00::/8, unix")
        XCTAssertTrue(list.contains("10.200.3.4"))
        XCTAssertTrue(list.contains("::ffff:10.1.2.3"), "an IPv4-mapped peer matches the IPv4 range")
        XCTAssertTrue(list.contains("192.168.1.7"))
        XCTAssertFalse(list.contains("192.168.1.8"))
        XCTAssertTrue(list.contains("fd12::1"))
        XCTAssertFalse(list.contains("fe80::1"))
        XCTAssertFalse(list.contains("11.0.0.1"))
        XCTAssertTrue(list.allowsUnix)
        XCTAssertFalse(try AddressList(parsing: "127.0.0.1").allowsUnix)
        XCTAssertTrue(try AddressList(parsing: "*").contains("8.8.8.8"))
        XCTAssertTrue(try AddressList(parsing: "::ffff:127.0.0.0/104").contains("127.0.0.1"))
        XCTAssertTrue(try AddressList(parsing: "0.0.0.0/0").contains("203.0.113.9"))
    }

    func testAddressListRefusesWhatCanNeverMatch() {
        for bad in ["localhost", "10.0.0.0/33", "10.0.0.0/x", "fd00::/129", "10.0.0", "*.example.com"] {
            XCTAssertThrowsError(try AddressList(parsing: "127.0.0.1,\(bad)"), bad) { error in
                XCTAssertTrue("\(error)".contains("\"\(bad)\" can never match"), "\(error)")
            }
        }
    }

    func testAddressListSurvivesTheTripToWorkers() throws {
        let list = try AddressList(parsing: "10.0.0.0/8,unix")
        let copy = try JSONDecoder().decode(AddressList.self, from: JSONEncoder().encode(list))
        XCTAssertEqual(copy, list)
        XCTAssertTrue(copy.contains("10.9.9.9") && copy.allowsUnix)
    }

    func testBindRefusesASchemeAndExplainsWildcards() {
        guard case .failure(let e) = BindAddress.parse("http://127.0.0.1:8000") else { return XCTFail("accepted a scheme") }
        XCTAssertTrue(e.description.contains("-b 127.0.0.1:8000"), e.description)
        XCTAssertEqual(try BindAddress.parse("8000").get().explained, "127.0.0.1:8000 (this machine only)")
        XCTAssertEqual(try BindAddress.parse(":8000").get().explained, "127.0.0.1:8000 (this machine only)")
        XCTAssertEqual(try BindAddress.parse("0.0.0.0:8000").get().explained, "0.0.0.0:8000 (every IPv4 address of this machine)")
        XCTAssertEqual(try BindAddress.parse("127.0.0.1:80").get().explained, "127.0.0.1:80 (this machine only)")
    }

    func testConfigFileLinesKeepTheirNumbers() throws {
        let lines = try ConfigFile.lines(from: "# srv\nworkers = 4\n\nlimit_request_line = 100\nreload = yes\n",
                                         path: "srv.conf")
        XCTAssertEqual(lines.map { $0.number }, [2, 4, 5])
        XCTAssertEqual(lines.map { $0.setting.name }, ["workers", "limit-request-line", "reload"])
        XCTAssertEqual(lines.map { $0.value }, ["4", "100", "yes"])
    }

    func testRuntimeDirectoryIsCreatedPrivateAndCheckedWhenItExists() throws {
        let base = NSTemporaryDirectory() + "srv-deploy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let dir = base + "/a/run"
        try RuntimeDirectory.prepare(dir, owner: geteuid(), mode: 0o700, exactMode: true, what: "runtime directory")
        var st = stat()
        XCTAssertEqual(stat(dir, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        try RuntimeDirectory.prepare(dir, owner: geteuid(), mode: 0o700, exactMode: true, what: "runtime directory")
        chmod(dir, 0o755)
        XCTAssertThrowsError(try RuntimeDirectory.prepare(dir, owner: geteuid(), mode: 0o700, exactMode: true, what: "runtime directory")) {
            XCTAssertTrue("\($0)".contains("expected mode 700, found 755"), "\($0)")
        }
        XCTAssertThrowsError(try RuntimeDirectory.prepare(dir, owner: geteuid() &+ 1, mode: 0o755, exactMode: false, what: "runtime directory")) {
            XCTAssertTrue("\($0)".contains("found uid \(geteuid())"), "\($0)")
        }
        let link = base + "/link"
        symlink(dir, link)
        XCTAssertThrowsError(try RuntimeDirectory.prepare(link, owner: geteuid(), mode: 0o700, exactMode: false, what: "runtime directory"))
    }

}

final class ABIEvolutionTests: XCTestCase {
    /// The smallest descriptor srv accepts is ABI 1.0's (56 bytes), not the current
    /// header's: once 1.1 adds a field, 1.0 plugins must still load.
    func testMinimumDescriptorIsTheOneOfABI10() {
        XCTAssertEqual(GatewayABI.minimumDescriptorSize, 56)
        XCTAssertLessThanOrEqual(GatewayABI.minimumDescriptorSize, MemoryLayout<srv_descriptor>.size)
    }
}
