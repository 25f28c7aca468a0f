import CSrvSystem
import Glibc
import NIOCore

/// The checks of a request head that RFC 9112 and RFC 9110 ask of a server, beyond what
/// llhttp's framing already enforces. Pure functions on the head's bytes.
enum RequestValidation {
    /// A Host value (or an absolute-form target's authority): `host[:port]`, where host is
    /// a reg-name (unreserved, pct-encoded and sub-delims characters), an IPv4 address, or
    /// an IP literal in brackets (RFC 9112 3.2, RFC 3986 3.2.2). No userinfo, no spaces,
    /// no slashes, no bare IPv6, nothing outside ASCII. An empty value is valid (a target
    /// without authority).
    static func isValidHost(_ value: UnsafeRawBufferPointer) -> Bool {
        guard let p = value.baseAddress else { return true }
        return srv_http_is_host(p.assumingMemoryBound(to: CChar.self), value.count) != 0
    }

    /// The authority of an absolute-form target (`http://authority/path`), or nil for
    /// another form. A userinfo (`user@`) is returned too, for the caller to refuse.
    static func absoluteFormAuthority(_ target: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        absoluteFormAuthorityRange(target).map { UnsafeRawBufferPointer(rebasing: target[$0]) }
    }

    /// Where an absolute-form target's authority lies; what follows it is the path.
    static func absoluteFormAuthorityRange(_ target: UnsafeRawBufferPointer) -> Range<Int>? {
        let skip: Int
        if hasPrefixLower(target, "http://") { skip = 7 } else if hasPrefixLower(target, "https://") { skip = 8 } else { return nil }
        var end = skip
        while end < target.count, target[end] != UInt8(ascii: "/"), target[end] != UInt8(ascii: "?"), target[end] != UInt8(ascii: "#") {
            end += 1
        }
        return skip..<end
    }

    /// The tokens of a Connection header value that decide persistence (a comma-separated
    /// list; spaces and tabs around a token are not part of it). No allocation: it runs
    /// for every request that sends Connection, as browsers do.
    static func connectionOptions(_ value: UnsafeRawBufferPointer) -> (close: Bool, keepAlive: Bool) {
        var close = false, keepAlive = false
        var start = 0
        let n = value.count
        while start <= n {
            var end = start
            while end < n, value[end] != UInt8(ascii: ",") { end += 1 }
            let token = trimmed(UnsafeRawBufferPointer(rebasing: value[start..<end]))
            switch token.count {
            case 5: if HTTPChars.equalsLower(token, "close") { close = true }
            case 10: if HTTPChars.equalsLower(token, "keep-alive") { keepAlive = true }
            default: break
            }
            start = end + 1
        }
        return (close, keepAlive)
    }

    /// Fields a sender must not put in a trailer section (RFC 9110 6.5.1): framing
    /// (Content-Length, Transfer-Encoding, TE, Trailer), routing (Host), connection
    /// management, request modifiers (controls, conditionals, credentials) and content
    /// metadata. srv refuses a request that sends one rather than guess.
    static func isForbiddenInTrailer(_ name: UnsafeRawBufferPointer) -> Bool {
        for forbidden in forbiddenTrailers where HTTPChars.equalsLower(name, forbidden) { return true }
        if name.count > 3, HTTPChars.equalsLower(UnsafeRawBufferPointer(rebasing: name[0..<3]), "if-") { return true }
        return false
    }

    private static let forbiddenTrailers: [StaticString] = [
        "content-length", "transfer-encoding", "te", "trailer", "host", "connection", "keep-alive", "upgrade",
        "proxy-connection", "expect", "max-forwards", "cache-control", "range", "authorization",
        "proxy-authorization", "cookie", "content-type", "content-encoding", "content-range", "content-location",
    ]

    /// A method is a token (RFC 9110 9.1): one llhttp does not know gets 501, garbage 400.
    static func isToken(_ bytes: UnsafeRawBufferPointer) -> Bool {
        !bytes.isEmpty && bytes.allSatisfy { HTTPChars.isToken($0) }
    }

    /// The start of a request line with no LF among its first `decided` bytes (the rest
    /// waits for the next read; not past `maxLine`): it waits for the rest before llhttp
    /// sees it.
    static func requestLineIncomplete(_ buffer: ByteBuffer, decided: Int, maxLine: Int) -> Bool {
        buffer.withUnsafeReadableBytes { raw in
            // A whole head, as most reads are, has its line: no search.
            guard let base = raw.baseAddress, decided < raw.count || raw[raw.count - 1] != 0x0a,
                  raw.count <= maxLine else { return false }
            return memchr(base, 0x0a, decided) == nil
        }
    }

    /// The method of the request line at the start of `raw` when the line has the shape
    /// `method SP target SP HTTP-version` (RFC 9112 3), as far as it has arrived: a token,
    /// then at most two more words, the last one `HTTP/` once the line is complete. Nil for
    /// anything else (`G ET / HTTP/1.0` is a malformed line, not an unknown method G).
    static func methodOfWellFormedLine(_ raw: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        var end = 0
        while end < raw.count, raw[end] != 0x0d, raw[end] != 0x0a { end += 1 }
        let words = UnsafeRawBufferPointer(rebasing: raw[..<end]).split(separator: 0x20, omittingEmptySubsequences: false)
        guard let method = words.first.map(UnsafeRawBufferPointer.init(rebasing:)), isToken(method), words.count <= 3 else { return nil }
        if end < raw.count {
            guard words.count == 3, !words[1].isEmpty, hasPrefixLower(UnsafeRawBufferPointer(rebasing: words[2]), "http/") else { return nil }
        }
        return method
    }

    /// In the head at the start of `buffer` (up to its blank line, or all of it while the
    /// head is incomplete), a tab that is trailing whitespace of a field value (only spaces
    /// and tabs follow before CR LF) becomes a space. llhttp reads a trailing space as the
    /// optional whitespace RFC 9112 5 says it is, but takes `chunked\t` or `5\t` for
    /// another value. A tab anywhere else is left alone. Costs a memchr per read that has
    /// no tab in its head.
    ///
    /// Returns how many bytes at the end of an incomplete head must wait for the next read
    /// before anyone looks at them: whitespace with a tab in it, and the CR and LF that may
    /// start the head's blank line, whose meaning the next bytes decide. So the answer to a
    /// head never depends on where the client's writes split it.
    static func spaceTrailingTabs(in buffer: inout ByteBuffer) -> Int {
        let (hasTab, undecided) = buffer.withUnsafeReadableBytes { raw -> (Bool, Int) in
            guard let base = raw.baseAddress, raw.count > 0 else { return (false, 0) }
            let last = raw[raw.count - 1]
            // A read that ends its head (as almost every one does) leaves nothing undecided.
            let endsHead = raw.count >= 4 && last == 0x0a && raw[raw.count - 2] == 0x0d
                && raw[raw.count - 3] == 0x0a && raw[raw.count - 4] == 0x0d
            let mayWait = !endsHead && (last == 0x09 || last == 0x0d || last == 0x0a)
            // The whole read first (memchr is fast); the head's end only when there is a tab.
            guard mayWait || memchr(base, 0x09, raw.count) != nil else { return (false, 0) }
            let end = headEnd(raw)
            return (memchr(base, 0x09, end ?? raw.count) != nil, end == nil ? undecidedTail(raw) : 0)
        }
        guard hasTab else { return undecided }
        buffer.withUnsafeMutableReadableBytes { raw in
            let end = headEnd(UnsafeRawBufferPointer(raw)) ?? raw.count - undecided
            var i = 0
            while i < end {
                guard raw[i] == 0x09 else { i += 1; continue }
                var j = i
                while j < end, raw[j] == 0x09 || raw[j] == 0x20 { j += 1 }
                if j < end, raw[j] == 0x0d {
                    for k in i..<j where raw[k] == 0x09 { raw[k] = 0x20 }
                }
                i = j
            }
        }
        return undecided
    }

    /// The trailing spaces, tabs, CRs and LFs of an incomplete head when they hold a tab, a
    /// CR or a LF (a run of spaces alone means the same whatever follows). At most 8 KB
    /// wait: a longer run is refused by the head's limits all the same.
    private static func undecidedTail(_ raw: UnsafeRawBufferPointer) -> Int {
        var start = raw.count, decisive = false
        while start > 0, raw.count - start < 8192 {
            let c = raw[start - 1]
            guard c == 0x20 || c == 0x09 || c == 0x0d || c == 0x0a else { break }
            if c != 0x20 { decisive = true }
            start -= 1
        }
        return decisive ? raw.count - start : 0
    }

    /// At the start of a chunk-size line: the whitespace RFC 9112 7.1.1 allows around a
    /// chunk extension's `;` and `=` (BWS), which llhttp refuses, is taken out, and the size
    /// gets as many leading zeros so the line keeps its length (`3 ; a = b` becomes
    /// `00003;a=b`). Quoted strings are left alone. Whitespace after the size with no `;`
    /// after it is no BWS (`a \r\n`): the line is invalid, which llhttp would let pass.
    enum ChunkLine: Equatable {
        case ready
        /// The line has not fully arrived: its bytes must wait for the rest (a line past
        /// `maxLine` is left to llhttp).
        case incomplete
        case whitespaceAfterSize
    }

    static func closeUpChunkExtensions(in buffer: inout ByteBuffer, maxLine: Int = 4096) -> ChunkLine {
        buffer.withUnsafeMutableReadableBytes { raw -> ChunkLine in
            let n = min(raw.count, maxLine)
            guard let lf = (0..<n).first(where: { raw[$0] == 0x0a }) else { return raw.count > maxLine ? .ready : .incomplete }
            let end = lf > 0 && raw[lf - 1] == 0x0d ? lf - 1 : lf
            var start = 0
            while start < end, HTTPChars.hexValue(raw[start]) != nil { start += 1 }
            guard start < end, raw[start] == 0x20 || raw[start] == 0x09 || raw[start] == 0x3b else { return .ready }
            var afterSpace = start
            while afterSpace < end, raw[afterSpace] == 0x20 || raw[afterSpace] == 0x09 { afterSpace += 1 }
            if afterSpace == end || raw[afterSpace] != 0x3b { return .whitespaceAfterSize }
            var kept: [UInt8] = []
            kept.reserveCapacity(end - start)
            var i = start, quoted = false
            while i < end {
                let c = raw[i]
                if quoted {
                    kept.append(c)
                    if c == 0x5c, i + 1 < end { kept.append(raw[i + 1]); i += 1 } else if c == 0x22 { quoted = false }
                    i += 1
                    continue
                }
                if c == 0x20 || c == 0x09 {
                    var j = i
                    while j < end, raw[j] == 0x20 || raw[j] == 0x09 { j += 1 }
                    let before = kept.last ?? 0x3b  // right after the size, before `;`
                    let after = j < end ? raw[j] : 0
                    if before == 0x3b || before == 0x3d || after == 0x3b || after == 0x3d {
                        i = j  // BWS: dropped
                        continue
                    }
                    kept.append(contentsOf: (i..<j).map { raw[$0] })
                    i = j
                    continue
                }
                if c == 0x22 { quoted = true }
                kept.append(c)
                i += 1
            }
            let removed = (end - start) - kept.count
            guard removed > 0 else { return .ready }
            // Shift the size right over the removed bytes, then the extensions after it.
            for k in stride(from: start - 1, through: 0, by: -1) { raw[k + removed] = raw[k] }
            for k in 0..<removed { raw[k] = 0x30 }
            for (k, c) in kept.enumerated() { raw[start + removed + k] = c }
            return .ready
        }
    }

    /// Where the head at the start of `raw` ends (after its CR LF CR LF), or nil when it has
    /// not fully arrived.
    private static func headEnd(_ raw: UnsafeRawBufferPointer) -> Int? {
        guard let base = raw.baseAddress else { return nil }
        let end = srv_http_head_end(base.assumingMemoryBound(to: CChar.self), raw.count)
        return end < 0 ? nil : end
    }

    // MARK: - Bytes

    private static func hasPrefixLower(_ bytes: UnsafeRawBufferPointer, _ prefix: StaticString) -> Bool {
        bytes.count >= prefix.utf8CodeUnitCount && HTTPChars.equalsLower(UnsafeRawBufferPointer(rebasing: bytes[0..<prefix.utf8CodeUnitCount]), prefix)
    }

    private static func trimmed(_ b: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var start = 0, end = b.count
        while start < end, b[start] == 0x20 || b[start] == 0x09 { start += 1 }
        while end > start, b[end - 1] == 0x20 || b[end - 1] == 0x09 { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: b[start..<end])
    }
}
