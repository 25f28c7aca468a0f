import Glibc
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
    private func exchange(front: [ChannelHandler & Sendable], behind: (ChannelHandler & Sendable)? = nil,
                          pipelined: Bool = false) throws -> (received: Int, responses: [String], directWrites: Bool) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let worker = TestApp.worker(group: group, clock: .coarse)
        let accepted = group.next().makePromise(of: Channel.self)
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try worker.addConnectionHandlers(front, to: channel)
                    // Added once the connection is set up: direct sends cannot know of it.
                    if let h = behind { try channel.pipeline.syncOperations.addHandler(h, position: .first) }
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
        var responses: [String] = []
        let requests = (1...3).map { "GET /\($0) HTTP/1.1\r\nHost: h\r\n\r\n" }
        for batch in pipelined ? [requests.joined()] : requests {
            XCTAssertEqual(batch.withCString { send(client, $0, strlen($0), 0) }, batch.utf8.count)
            let expected = pipelined ? 3 : 1
            var bytes: [UInt8] = []
            while true {
                let (parsed, leftover) = TestResponse.parse(bytes)
                if parsed.count == expected && leftover == 0 && parsed.allSatisfy(\.complete) {
                    responses += parsed.map(\.body)
                    break
                }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = recv(client, &buffer, buffer.count, 0)
                guard n > 0 else { XCTFail("the connection closed"); return (received, responses, false) }
                bytes += buffer[0..<n]
            }
            received += bytes.count
        }
        let channel = try accepted.futureResult.wait()
        let direct = try channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: HTTPConnection.self).directWrites
        }.wait()
        worker.shutdownGracefully(timeout: 0)
        return (received, responses, direct)
    }

    func testAnOutboundHandlerInFrontSeesEveryResponseByte() throws {
        TestApp.handler = { $0.respond(body: "hello\n") }
        let counter = OutboundCounter()
        let result = try exchange(front: [counter])
        XCTAssertFalse(result.directWrites)
        XCTAssertEqual(counter.bytes, result.received, "bytes that skipped the outbound handler")
        XCTAssertEqual(TestApp.calls, 3)
    }

    func testWithoutOneResponsesFromTheSecondOnGoStraightToTheSocket() throws {
        TestApp.handler = { $0.respond(body: "hello\n") }
        let late = OutboundCounter()
        let result = try exchange(front: [InboundOnly()], behind: late)
        XCTAssertTrue(result.directWrites)
        XCTAssertEqual(TestApp.calls, 3)
        // A handler added after the connection was set up sees the first response only (a
        // connection looks its socket up at its second request): the others went to send(2).
        XCTAssertEqual(late.bytes * 3, result.received)
    }

    func testPipelinedRequestsOnARealSocketAreAnsweredInOrder() throws {
        TestApp.handler = { $0.respond(body: $0.pathInfo) }
        let result = try exchange(front: [], pipelined: true)
        XCTAssertEqual(result.responses, ["/1", "/2", "/3"])
        let again = try exchange(front: [OutboundCounter()], pipelined: true)
        XCTAssertEqual(again.responses, ["/1", "/2", "/3"])
    }
}
