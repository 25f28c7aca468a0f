import Foundation
import Glibc
import NIOCore
import NIOPosix
import XCTest
@testable import SrvCore

/// srv sends complete responses straight to the socket, whose descriptor NIO hands out
/// through `withUnsafeTransportIfAvailable`. If a NIO release stops exposing it, srv still
/// works but every response takes NIO's slower write path: this test is what notices.
final class ChannelSocketTests: XCTestCase {
    private final class Capture: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let found: EventLoopPromise<(CInt?, SocketAddress?)>
        init(_ found: EventLoopPromise<(CInt?, SocketAddress?)>) { self.found = found }
        func channelActive(context: ChannelHandlerContext) {
            found.succeed((ChannelSocket.descriptor(of: context.channel), context.channel.remoteAddress))
        }
    }

    /// Accepts one connection on `address` and runs `check` with what ChannelSocket found,
    /// the client's socket and the channel's remote address, while the channel is open.
    private func withAcceptedConnection(on address: SocketAddress,
                                        _ check: (_ fd: CInt?, _ client: CInt, _ remote: SocketAddress?) throws -> Void) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let found = group.next().makePromise(of: (CInt?, SocketAddress?).self)
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Capture(found)) }
            }
            .bind(to: address).wait()
        defer { try? server.close().wait() }
        let client = try Self.connectSocket(server.localAddress!)
        defer { close(client) }
        let (fd, remote) = try found.futureResult.wait()
        try check(fd, client, remote)
    }

    private static func connectSocket(_ address: SocketAddress) throws -> CInt {
        let fd = socket(CInt(address.protocol.rawValue), CInt(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let rc = address.withSockAddr { connect(fd, $0, socklen_t($1)) }
        XCTAssertEqual(rc, 0, "connect: \(String(cString: strerror(errno)))")
        return fd
    }

    func testFindsTheDescriptorOfATCPConnection() throws {
        try withAcceptedConnection(on: try SocketAddress(ipAddress: "127.0.0.1", port: 0)) { fd, client, remote in
            guard let fd = fd else {
                return XCTFail("ChannelSocket found no descriptor: NIO's withUnsafeTransportIfAvailable no longer gives "
                    + "a socket channel's handle; every response takes NIO's write path")
            }
            // The descriptor is the accepted end of this very connection: what srv sends on it arrives here.
            var local = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(client, $0, &length) }
            }
            XCTAssertEqual(remote?.port, Int(UInt16(bigEndian: local.sin_port)))
            let sent = "ping".withCString { send(fd, $0, 4, CInt(MSG_NOSIGNAL)) }
            XCTAssertEqual(sent, 4)
            var buffer = [UInt8](repeating: 0, count: 8)
            XCTAssertEqual(recv(client, &buffer, 8, 0), 4)
            XCTAssertEqual(Array(buffer.prefix(4)), Array("ping".utf8))
        }
    }

    func testFindsTheDescriptorOfAUnixConnection() throws {
        let path = NSTemporaryDirectory() + "srv-cs-\(getpid()).sock"
        unlink(path)
        defer { unlink(path) }
        try withAcceptedConnection(on: try SocketAddress(unixDomainSocketPath: path)) { fd, client, _ in
            guard let fd = fd else { return XCTFail("ChannelSocket found no descriptor for a Unix connection") }
            let sent = "pong".withCString { send(fd, $0, 4, CInt(MSG_NOSIGNAL)) }
            XCTAssertEqual(sent, 4)
            var buffer = [UInt8](repeating: 0, count: 8)
            XCTAssertEqual(recv(client, &buffer, 8, 0), 4)
            XCTAssertEqual(Array(buffer.prefix(4)), Array("pong".utf8))
        }
    }
}
