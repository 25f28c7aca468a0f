/// `srv.request_id`: unique across workers, generations and restarts. srv's own id is a
/// random 48-bit prefix drawn when a worker starts (12 hex digits) and the number of the
/// request in that worker: `3f9c0a41d27e-42`. A trusted proxy's `X-Request-Id`
/// (--forwarded-allow-ips; nginx's `$request_id`) is taken instead, so that one id
/// follows a request through both servers' logs.
enum RequestID {
    static func newPrefix() -> String {
        let digits = Array("0123456789abcdef")
        var value = UInt64.random(in: 0..<(1 << 48))
        var text = [Character](repeating: "0", count: 12)
        for i in (0..<12).reversed() {
            text[i] = digits[Int(value & 15)]
            value >>= 4
        }
        return String(text) + "-"
    }

    /// An X-Request-Id srv adopts: 1 to 128 characters of letters, digits and `-._:`,
    /// so that it is safe in a log line and in environ.
    static func isAcceptable(_ value: UnsafeRawBufferPointer) -> Bool {
        guard (1...128).contains(value.count) else { return false }
        for c in value {
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                 UInt8(ascii: ":"):
                continue
            default:
                return false
            }
        }
        return true
    }
}
