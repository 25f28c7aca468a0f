import CSrvSystem

/// Byte-level HTTP grammar used on the hot path (RFC 9110 tokens and field values). The
/// token and field-value rules are C's (http_chars.c), where the response path copies and
/// checks fields.
enum HTTPChars {
    static func isToken(_ c: UInt8) -> Bool { srv_http_is_tchar(c) != 0 }

    /// The value of a hexadecimal digit, nil for any other byte.
    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 65...70: return c - 55
        case 97...102: return c - 87
        default: return nil
        }
    }

    /// Visible characters, space, tab and obs-text; never CR, LF, NUL, DEL or other
    /// controls. The rule is C's, which the response path's header copy uses too.
    static func isFieldValue(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let p = bytes.baseAddress else { return true }
        return srv_http_is_field_value(p.assumingMemoryBound(to: CChar.self), bytes.count) != 0
    }

    /// Compares `bytes` with a lowercase ASCII literal, ignoring case.
    @inline(__always)
    static func equalsLower(_ bytes: UnsafeRawBufferPointer, _ lower: StaticString) -> Bool {
        guard bytes.count == lower.utf8CodeUnitCount else { return false }
        let l = lower.utf8Start
        for i in 0..<bytes.count where bytes[i] | 0x20 != l[i] && bytes[i] != l[i] { return false }
        return true
    }

    /// Connection-level headers an application must not set: srv owns the framing.
    static func isHopByHop(_ name: UnsafeRawBufferPointer) -> Bool {
        switch name.count {
        case 10: return equalsLower(name, "connection") || equalsLower(name, "keep-alive")
        case 17: return equalsLower(name, "transfer-encoding")
        case 7: return equalsLower(name, "upgrade")
        default: return false
        }
    }

    /// A non-negative decimal without sign or spaces, or nil.
    /// Leading zeros do not count toward the 18 digits that always fit an Int.
    static func parseDecimal(_ bytes: UnsafeRawBufferPointer) -> Int? {
        let n = bytes.count
        guard n > 0 else { return nil }
        var i = 0
        while i < n - 1, bytes[i] == 48 { i += 1 }
        guard n - i <= 18 else { return nil }
        var v = 0
        while i < n {
            let c = bytes[i]
            guard c >= 48 && c <= 57 else { return nil }
            v = v * 10 + Int(c - 48)
            i += 1
        }
        return v
    }

    static func parseDecimal(_ s: String) -> Int? {
        var s = s
        return s.withUTF8 { parseDecimal(UnsafeRawBufferPointer($0)) }
    }
}
