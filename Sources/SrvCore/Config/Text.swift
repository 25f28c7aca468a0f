import Glibc

/// The few text helpers srv needs, written on the standard library so that srv links
/// FoundationEssentials only: Foundation proper brings ICU, and loading it cost every
/// process (each worker srv starts or replaces) about 2 ms of CPU (`perf stat srv --version`:
/// 6.4 ms with Foundation, 4.7 with FoundationEssentials).
extension String {
    /// `value` with `decimals` digits after the point, rounded (printf's `%.Nf`).
    init(fixed value: Double, decimals: Int) {
        guard value.isFinite else { self = "\(value)"; return }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let units = (abs(value) * scale).rounded()
        let sign = value < 0 && units > 0 ? "-" : ""
        guard units < 9.0e18 else { self = sign + "\(abs(value))"; return }
        let n = UInt64(units), whole = n / UInt64(scale), fraction = n % UInt64(scale)
        guard decimals > 0 else { self = sign + String(whole); return }
        let digits = String(fraction)
        self = sign + String(whole) + "." + String(repeating: "0", count: decimals - digits.count) + digits
    }

    /// A byte as two lowercase hex digits.
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
    }

    /// Padded with spaces on the right to `n` characters (never cut).
    func padded(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }

    /// Without leading and trailing spaces and tabs (a setting's value, an HTTP field's).
    var trimmingSpaces: String { Substring(self).trimmingSpaces }

    /// Without leading and trailing whitespace, CR and LF included (a pid file's line).
    public var trimmingWhitespace: String {
        Substring(self).trimming { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" || $0 == "\r\n" }
    }

    /// The directory part of a path ("/a/b/c.so" -> "/a/b", "c.so" -> ".", "/c" -> "/").
    var directoryPart: String {
        guard let slash = lastIndex(of: "/") else { return "." }
        return slash == startIndex ? "/" : String(self[..<slash])
    }
}

extension Substring {
    var trimmingSpaces: String { trimming { $0 == " " || $0 == "\t" } }

    func trimming(_ isSpace: (Character) -> Bool) -> String {
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
