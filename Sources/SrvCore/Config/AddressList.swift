import Glibc

/// The peers of --forwarded-allow-ips and --proxy-allow-from: addresses (`10.0.0.7`,
/// `::1`), CIDR ranges (`10.0.0.0/8`, `fd00::/8`), `unix` for peers on a Unix socket (a
/// proxy on the same machine, such as nginx), and `*` for every peer.
///
/// An entry that can never match a peer (a host name, a typo, a prefix length too long) is
/// refused when the settings are read, so a mistake shows at start, not as wrong client
/// addresses in production. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.7`) matches the IPv4
/// entries.
public struct AddressList: Codable, Equatable {
    /// The entries as given, normalised (no spaces); what the settings carry to workers.
    public let entries: [String]
    private let matchers: [Matcher]

    enum Matcher: Equatable {
        case any
        case unix
        /// An address family's bytes and how many leading bits must match.
        case network(family: Int32, bytes: [UInt8], prefix: Int)
    }

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses a comma-separated list; throws for an entry that can never match.
    public init(parsing text: String) throws {
        let entries = text.split(separator: ",").map { $0.trimmingSpaces }.filter { !$0.isEmpty }
        try self.init(entries)
    }

    public init(_ entries: [String]) throws {
        self.entries = entries
        matchers = try entries.map { entry in
            guard let m = AddressList.matcher(entry) else {
                throw ParseError(description: "\"\(entry)\" can never match a peer; expected an IP address (10.0.0.7, ::1), a CIDR range (10.0.0.0/8, fd00::/8), unix (peers on a Unix socket) or * (every peer)")
            }
            return m
        }
    }

    public init(from decoder: Decoder) throws {
        try self.init(try decoder.singleValueContainer().decode([String].self))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(entries)
    }

    public static func == (a: AddressList, b: AddressList) -> Bool { a.entries == b.entries }

    /// True when peers on a Unix socket are allowed.
    var allowsUnix: Bool { matchers.contains { $0 == .any || $0 == .unix } }

    /// True when `address` (a numeric IPv4 or IPv6 address, as the socket reports it) is allowed.
    func contains(_ address: String) -> Bool {
        if matchers.contains(.any) { return true }
        guard var (family, bytes) = AddressList.numeric(address) else { return false }
        if family == AF_INET6, AddressList.isMapped(bytes) {
            family = AF_INET
            bytes = Array(bytes[12...])
        }
        for case .network(let f, let net, let prefix) in matchers where f == family {
            if AddressList.samePrefix(bytes, net, bits: prefix) { return true }
        }
        return false
    }

    private static func matcher(_ entry: String) -> Matcher? {
        if entry == "*" { return .any }
        if entry.lowercased() == "unix" { return .unix }
        var address = Substring(entry)
        var prefix: Int?
        if let slash = entry.firstIndex(of: "/") {
            address = entry[..<slash]
            guard let p = Int(entry[entry.index(after: slash)...]) else { return nil }
            prefix = p
        }
        guard var (family, bytes) = numeric(String(address)) else { return nil }
        let bits = bytes.count * 8
        var p = prefix ?? bits
        guard (0...bits).contains(p) else { return nil }
        // An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range it maps.
        if family == AF_INET6, p >= 96, isMapped(bytes) {
            family = AF_INET
            bytes = Array(bytes[12...])
            p -= 96
        }
        return .network(family: family, bytes: bytes, prefix: p)
    }

    private static func numeric(_ text: String) -> (Int32, [UInt8])? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return (AF_INET, withUnsafeBytes(of: &v4) { Array($0) })
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return (AF_INET6, withUnsafeBytes(of: &v6) { Array($0) })
        }
        return nil
    }

    private static func isMapped(_ bytes: [UInt8]) -> Bool {
        bytes.count == 16 && bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff
    }

    private static func samePrefix(_ a: [UInt8], _ b: [UInt8], bits: Int) -> Bool {
        var left = bits
        for i in 0..<a.count where left > 0 {
            let n = min(8, left)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - n))
            if a[i] & mask != b[i] & mask { return false }
            left -= n
        }
        return true
    }
}
