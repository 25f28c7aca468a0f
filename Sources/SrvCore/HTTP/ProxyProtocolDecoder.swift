import Logging
import NIOCore

/// HAProxy's PROXY protocol (v1 text and v2 binary), off by default (--proxy-protocol).
/// It reads the header a load balancer sends before HTTP, reports the real client address
/// to the HTTPConnection as a user event, then removes itself. Only peers listed in
/// --proxy-allow-from may send one.
final class ProxyProtocolDecoder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    struct Proxied {
        var source: SocketAddress?
        var destination: SocketAddress?
    }

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    private var buffer: ByteBuffer?
    private let allowed: AddressList
    private let logger: Logger

    init(allowed: AddressList, logger: Logger) {
        self.allowed = allowed
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        do {
            guard let proxied = try parse(&buffer!) else { return }
            let peer = context.channel.remoteAddress?.ipAddress ?? "unix"
            guard allowed.contains(peer) || (context.channel.remoteAddress?.ipAddress == nil && allowed.allowsUnix) else {
                throw ProxyError("a PROXY header from \(peer), which is not in --proxy-allow-from")
            }
            if proxied.source != nil { context.fireUserInboundEventTriggered(proxied) }
            let rest = buffer!
            buffer = nil
            // Pass on what followed the header before leaving the pipeline.
            if rest.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(rest))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            logger.info("closing a connection: \(error)")
            context.close(promise: nil)
        }
    }

    struct ProxyError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    /// Consumes a complete header and returns it, nil when more bytes are needed.
    func parse(_ b: inout ByteBuffer) throws -> Proxied? {
        let view = b.readableBytesView
        if view.count >= 1 && view.first == UInt8(ascii: "P") {
            guard let end = view.firstIndex(of: UInt8(ascii: "\n")) else {
                if view.count > 107 { throw ProxyError("a PROXY v1 header longer than 107 bytes") }
                return nil
            }
            let line = String(decoding: view[view.startIndex..<end], as: UTF8.self).trimmingCharacters("\r")
            b.moveReaderIndex(forwardBy: end - view.startIndex + 1)
            let parts = line.split(separator: " ")
            guard parts.first == "PROXY", parts.count >= 2 else { throw ProxyError("expected a PROXY header, found \"\(line.prefix(40))\"") }
            if parts[1] == "UNKNOWN" { return Proxied() }
            guard parts.count == 6, parts[1] == "TCP4" || parts[1] == "TCP6",
                  let sport = Int(parts[4]), let dport = Int(parts[5]) else {
                throw ProxyError("malformed PROXY v1 header \"\(line.prefix(60))\"")
            }
            let src = try SocketAddress(ipAddress: String(parts[2]), port: sport)
            let dst = try SocketAddress(ipAddress: String(parts[3]), port: dport)
            return Proxied(source: src, destination: dst)
        }
        guard view.count >= 16 else {
            if !Self.v2Signature.starts(with: view) { throw ProxyError("expected a PROXY protocol header") }
            return nil
        }
        guard view.prefix(12).elementsEqual(Self.v2Signature) else { throw ProxyError("expected a PROXY protocol header") }
        let s = view.startIndex
        let verCmd = view[s + 12], family = view[s + 13]
        let length = Int(view[s + 14]) << 8 | Int(view[s + 15])
        guard verCmd >> 4 == 2 else { throw ProxyError("unsupported PROXY protocol version \(verCmd >> 4)") }
        guard view.count >= 16 + length else { return nil }
        let body = Array(view[(s + 16)..<(s + 16 + length)])
        b.moveReaderIndex(forwardBy: 16 + length)
        if verCmd & 0xF == 0 { return Proxied() }  // LOCAL: a health check from the proxy itself
        switch family >> 4 {
        case 1 where body.count >= 12:
            let src = "\(body[0]).\(body[1]).\(body[2]).\(body[3])", dst = "\(body[4]).\(body[5]).\(body[6]).\(body[7])"
            return Proxied(source: try SocketAddress(ipAddress: src, port: Int(body[8]) << 8 | Int(body[9])),
                           destination: try SocketAddress(ipAddress: dst, port: Int(body[10]) << 8 | Int(body[11])))
        case 2 where body.count >= 36:
            func v6(_ o: Int) -> String {
                stride(from: o, to: o + 16, by: 2).map { String(Int(body[$0]) << 8 | Int(body[$0 + 1]), radix: 16) }.joined(separator: ":")
            }
            return Proxied(source: try SocketAddress(ipAddress: v6(0), port: Int(body[32]) << 8 | Int(body[33])),
                           destination: try SocketAddress(ipAddress: v6(16), port: Int(body[34]) << 8 | Int(body[35])))
        default:
            return Proxied()
        }
    }
}

extension String {
    func trimmingCharacters(_ c: Character) -> String {
        var s = Substring(self)
        while s.last == c { s.removeLast() }
        return String(s)
    }
}
