/// The blog's JSON: the API's output types (encoded by the SDK's `Response.json`, with
/// Foundation's JSONEncoder) and a small parser for POST /api/posts, whose errors say
/// where the input went wrong ("line 1, column 12: ...") for the 400 answer.

/// A post in the API: {"id", "title", "body", "created_at"}.
struct PostJSON: Encodable {
    var id: Int64
    var title: String
    var body: String
    var created_at: String

    init(_ post: Post) {
        id = post.id
        title = post.title
        body = post.body
        created_at = post.createdAt
    }
}

/// An API error: {"error": message} and, for validation failures, {"fields": {name: message}}.
struct ErrorJSON: Encodable {
    var error: String
    var fields: [String: String]?
}

/// Why a request body was refused with 400.
struct BadRequest: Error {
    var message: String
}

/// A parsed JSON value.
enum JSONValue {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(key: String, value: JSONValue)])

    /// The JSON type's name, for messages.
    var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Parses one JSON text (RFC 8259), or throws a `BadRequest` naming the line and column.
    static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        return try parser.document()
    }
}

extension Draft {
    /// The draft in a POST /api/posts body: an object whose "title" and "body" are strings
    /// (missing or null ones are empty and fail validation; other keys are ignored).
    static func fromJSON(_ bytes: [UInt8]) throws -> Draft {
        guard case .object(let members) = try JSONValue.parse(bytes) else {
            throw BadRequest(message: "Malformed post: the body must be a JSON object with \"title\" and \"body\".")
        }
        func field(_ name: String) throws -> String {
            switch members.last(where: { $0.key == name })?.value {
            case nil, .null?: return ""
            case .string(let s)?: return s
            case let other?: throw BadRequest(message: "Malformed post: \"\(name)\" must be a string, not \(other.typeName).")
            }
        }
        return Draft(title: try field("title"), body: try field("body"))
    }
}

/// A recursive-descent JSON parser over bytes.
private struct JSONParser {
    let bytes: [UInt8]
    var i = 0
    var depth = 0

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    mutating func document() throws -> JSONValue {
        skipSpace()
        if i == bytes.count { throw BadRequest(message: "Malformed JSON: the request body is empty.") }
        let value = try self.value()
        skipSpace()
        if i < bytes.count { throw error("unexpected \(found) after the JSON value") }
        return value
    }

    private mutating func value() throws -> JSONValue {
        guard i < bytes.count else { throw error("unexpected end of input, expected a value") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw error("unexpected \(found), expected a value")
        }
    }

    private mutating func object() throws -> JSONValue {
        try enter()
        i += 1
        var members: [(key: String, value: JSONValue)] = []
        skipSpace()
        if peek(UInt8(ascii: "}")) { i += 1; depth -= 1; return .object(members) }
        while true {
            skipSpace()
            guard peek(UInt8(ascii: "\"")) else { throw error("unexpected \(found), expected a member name in quotes") }
            let key = try string()
            skipSpace()
            guard peek(UInt8(ascii: ":")) else { throw error("unexpected \(found), expected \":\"") }
            i += 1
            skipSpace()
            members.append((key, try value()))
            skipSpace()
            if peek(UInt8(ascii: ",")) { i += 1; continue }
            if peek(UInt8(ascii: "}")) { i += 1; depth -= 1; return .object(members) }
            throw error("unexpected \(found), expected \",\" or \"}\"")
        }
    }

    private mutating func array() throws -> JSONValue {
        try enter()
        i += 1
        var elements: [JSONValue] = []
        skipSpace()
        if peek(UInt8(ascii: "]")) { i += 1; depth -= 1; return .array(elements) }
        while true {
            skipSpace()
            elements.append(try value())
            skipSpace()
            if peek(UInt8(ascii: ",")) { i += 1; continue }
            if peek(UInt8(ascii: "]")) { i += 1; depth -= 1; return .array(elements) }
            throw error("unexpected \(found), expected \",\" or \"]\"")
        }
    }

    private mutating func string() throws -> String {
        i += 1  // the opening quote
        var out: [UInt8] = []
        while i < bytes.count {
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "\""):
                i += 1
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                i += 1
                guard i < bytes.count else { break }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800..<0xDC00).contains(scalar), peek(UInt8(ascii: "\\")),
                       i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "u") {
                        i += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw error("invalid \\u surrogate pair") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    out.append(contentsOf: Array(String(Unicode.Scalar(scalar) ?? "\u{FFFD}").utf8))
                default:
                    i -= 1
                    throw error("invalid escape \"\\\(String(decoding: [e], as: UTF8.self))\" in a string")
                }
            case 0..<0x20:
                throw error("control character in a string (escape it as \\u00\(String(c, radix: 16)))")
            default:
                out.append(c)
                i += 1
            }
        }
        throw error("unexpected end of input in a string")
    }

    private mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw error("unexpected end of input in a \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
            default: throw error("invalid hex digit \(found) in a \\u escape")
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    private mutating func number() throws -> JSONValue {
        let start = i
        func digits() -> Int {
            let s = i
            while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
            return i - s
        }
        if peek(UInt8(ascii: "-")) { i += 1 }
        if peek(UInt8(ascii: "0")) {
            i += 1
        } else if digits() == 0 {
            throw error("unexpected \(found), expected a digit")
        }
        if peek(UInt8(ascii: ".")) {
            i += 1
            if digits() == 0 { throw error("unexpected \(found), expected a digit after \".\"") }
        }
        if peek(UInt8(ascii: "e")) || peek(UInt8(ascii: "E")) {
            i += 1
            if peek(UInt8(ascii: "+")) || peek(UInt8(ascii: "-")) { i += 1 }
            if digits() == 0 { throw error("unexpected \(found), expected an exponent") }
        }
        return .number(Double(String(decoding: bytes[start..<i], as: UTF8.self)) ?? .nan)
    }

    private mutating func literal(_ word: String) throws {
        let w = Array(word.utf8)
        guard bytes.count - i >= w.count, Array(bytes[i..<i + w.count]) == w else {
            throw error("invalid literal, expected \(word)")
        }
        i += w.count
    }

    private mutating func enter() throws {
        depth += 1
        if depth > 64 { throw error("nested more than 64 levels deep") }
    }

    private mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D {
            i += 1
        }
    }

    private func peek(_ c: UInt8) -> Bool { i < bytes.count && bytes[i] == c }

    /// The byte at the current position, for messages.
    private var found: String {
        guard i < bytes.count else { return "end of input" }
        let c = bytes[i]
        if c >= 0x21 && c < 0x7F { return "\"\(String(UnicodeScalar(c)))\"" }
        return "byte 0x\(String(c, radix: 16))"
    }

    /// A 400 message with the line and column (1-based, in bytes) of the current position.
    private func error(_ what: String) -> BadRequest {
        var line = 1, column = 1
        for c in bytes[0..<min(i, bytes.count)] {
            if c == 0x0A { line += 1; column = 1 } else { column += 1 }
        }
        return BadRequest(message: "Malformed JSON at line \(line), column \(column): \(what).")
    }
}
