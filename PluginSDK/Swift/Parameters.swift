/// Ordered name/value pairs decoded from `application/x-www-form-urlencoded` text: a query
/// string or a form body. Names may repeat; `self[name]` is the first value.
///
///     let form = request.form
///     let title = form["title"] ?? ""
///     let tags = form.all("tag")
public struct Parameters: RandomAccessCollection {
    /// The pairs, in the order they appeared.
    public var pairs: [(name: String, value: String)]

    /// Wraps pairs that are already decoded.
    public init(_ pairs: [(name: String, value: String)] = []) {
        self.pairs = pairs
    }

    /// Decodes `a=1&b=x+y&c=%C3%A9`: pairs are separated by "&" (empty ones are skipped),
    /// "+" is a space, "%XX" is a byte, and the bytes are read as UTF-8 (invalid sequences
    /// become U+FFFD). A pair without "=" has an empty value. A malformed escape is kept
    /// as it is.
    public init<Bytes: Collection>(urlEncoded bytes: Bytes) where Bytes.Element == UInt8 {
        var pairs: [(name: String, value: String)] = []
        for part in Array(bytes).split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            if let eq = part.firstIndex(of: UInt8(ascii: "=")) {
                pairs.append((Parameters.decode(part[part.startIndex..<eq]),
                              Parameters.decode(part[(eq + 1)...])))
            } else {
                pairs.append((Parameters.decode(part), ""))
            }
        }
        self.pairs = pairs
    }

    /// Decodes a query string or a form body; see `init(urlEncoded:)`.
    public init(urlEncoded string: String) {
        self.init(urlEncoded: Array(string.utf8))
    }

    /// The first value named `name` (names compare exactly), or nil.
    public subscript(name: String) -> String? {
        pairs.first { $0.name == name }?.value
    }

    /// Every value named `name`, in order.
    public func all(_ name: String) -> [String] {
        pairs.filter { $0.name == name }.map { $0.value }
    }

    public var startIndex: Int { pairs.startIndex }
    public var endIndex: Int { pairs.endIndex }
    public subscript(position: Int) -> (name: String, value: String) { pairs[position] }

    /// Percent-decodes one name or value of a form: "+" is a space.
    static func decode(_ bytes: ArraySlice<UInt8>) -> String {
        percentDecode(bytes, plusIsSpace: true)
    }
}

/// The value of one hexadecimal digit, or nil.
@inline(__always)
private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}

/// Decodes "%XX" escapes (and "+" when `plusIsSpace`), reading the result as UTF-8.
func percentDecode<Bytes: Collection>(_ bytes: Bytes, plusIsSpace: Bool) -> String
where Bytes.Element == UInt8 {
    let input = Array(bytes)
    var out: [UInt8] = []
    out.reserveCapacity(input.count)
    var i = 0
    while i < input.count {
        let c = input[i]
        if c == UInt8(ascii: "%"), i + 2 < input.count,
           let hi = hexValue(input[i + 1]), let lo = hexValue(input[i + 2]) {
            out.append(hi << 4 | lo)
            i += 3
            continue
        }
        out.append(plusIsSpace && c == UInt8(ascii: "+") ? UInt8(ascii: " ") : c)
        i += 1
    }
    return String(decoding: out, as: UTF8.self)
}
