import Glibc
import Logging
import NIOCore
import NIOPosix
import XCTest
@testable import SrvCore

/// A response sent straight to the socket must never skip a channel handler: with an
/// outbound handler in front of the connection (TLS or compression would be one), every
/// byte goes through NIO's pipeline. Real sockets: the direct path needs a descriptor.
final class DirectSendTests: XCTestCase {
    override func setUp() { TestApp.reset() }

    /// Counts the response bytes that pass through it, as a TLS handler would see them.
    private final class OutboundCounter: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = IOData
        var bytes = 0
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            bytes += unwrapOutboundIn(data).readableBytes
            context.write(data, promise: promise)
        }
    }

    private final class InboundOnly: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
    }

    /// Serves one connection with `front` ahead of HTTPConnection, sends three requests one
    /// after another on it, and returns the bytes the client read and whether the
    /// connection was allowed direct sends.
    private func exchange(front: [ChannelHandler & Sendable]) throws -> (received: Int, directWrites: Bool) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        var logger = Logger(label: "srv.test")
        logger.logLevel = .critical
        let worker = WorkerServer(settings: Settings(), apps: [MountedApp(mount: "", plugin: TestApp.plugin())],
                                  logger: logger, scoreboard: nil, accessLog: nil, generation: 1, multiprocess: false,
                                  eventLoopGroup: group, clock: .coarse)
        let accepted = group.next().makePromise(of: Channel.self)
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try worker.addConnectionHandlers(front, to: channel)
                    accepted.succeed(channel)
                }
            }
            .bind(to: try SocketAddress(ipAddress: "127.0.0.1", port: 0)).wait()
        defer { try? server.close().wait() }

        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        let rc = server.localAddress!.withSockAddr { connect(client, $0, socklen_t($1)) }
        XCTAssertEqual(rc, 0)
        var received = 0
        for i in 1...3 {
            let request = "GET /\(i) HTTP/1.1\r\nHost: h\r\n\r\n"
            XCTAssertEqual(request.withCString { send(client, $0, strlen($0), 0) }, request.utf8.count)
            var response: [UInt8] = []
            while !String(decoding: response, as: UTF8.self).hasSuffix("\r\n\r\nhello\n") {
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = recv(client, &buffer, buffer.count, 0)
                guard n > 0 else { XCTFail("the connection closed"); return (received, false) }
                response += buffer[0..<n]
            }
            received += response.count
        }
        let channel = try accepted.futureResult.wait()
        let direct = try channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: HTTPConnection.self).directWrites
        }.wait()
        worker.shutdownGracefully(timeout: 0)
        return (received, direct)
    }

    func testAnOutboundHandlerInFrontSeesEveryResponseByte() throws {
        let counter = OutboundCounter()
        let result = try exchange(front: [counter])
        XCTAssertFalse(result.directWrites)
        XCTAssertEqual(counter.bytes, result.received, "bytes that skipped the outbound handler")
        XCTAssertEqual(TestApp.calls, 3)
    }

    func testWithoutOneResponsesGoStraightToTheSocket() throws {
        let result = try exchange(front: [InboundOnly()])
        XCTAssertTrue(result.directWrites)
        XCTAssertEqual(TestApp.calls, 3)
    }
}
