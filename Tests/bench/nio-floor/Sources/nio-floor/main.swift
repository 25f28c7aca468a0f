import NIOCore
import NIOPosix

/// Answers every "\r\n\r\n" it sees with the same bytes srv's hello plugin sends (a Date
/// header of the same length included), written once per read and flushed on readComplete,
/// as srv does.
final class Floor: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    static let response: [UInt8] = Array(("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n"
        + "Server: srv\r\nDate: Fri, 27 Nov 2026 05:18:44 GMT\r\n\r\nHello, World!\n").utf8)
    private var matched = 0
    private var pending = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        var count = 0
        buffer.withUnsafeReadableBytes { raw in
            for byte in raw {
                let expected: UInt8 = matched % 2 == 0 ? 13 : 10
                if byte == expected { matched += 1 } else { matched = byte == 13 ? 1 : 0 }
                if matched == 4 { count += 1; matched = 0 }
            }
        }
        guard count > 0 else { return }
        var out = context.channel.allocator.buffer(capacity: Self.response.count * count)
        for _ in 0..<count { out.writeBytes(Self.response) }
        context.write(wrapOutboundOut(out), promise: nil)
        pending = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if pending { pending = false; context.flush() }
    }
}

let port = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 18096
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let channel = try ServerBootstrap(group: group)
    .serverChannelOption(ChannelOptions.backlog, value: 1024)
    .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
    .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Floor()) }
    }
    .bind(host: "127.0.0.1", port: port).wait()
// srv's worker wakes twice a second for its heartbeat; so does the floor (which also lets
// callgrind_control reach an idle process).
group.next().scheduleRepeatedTask(initialDelay: .milliseconds(500), delay: .milliseconds(500)) { _ in }
try channel.closeFuture.wait()
