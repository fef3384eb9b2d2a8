import NIOCore

/// A JSON document as the Session Manager payloads use it.
///
/// Object members keep their order so that what we encode matches the official peers byte for
/// byte; numbers keep their literal text so 64-bit values survive. Parsing is bounded (depth and
/// input size come from the caller's buffer) and never traps on malformed input.
public indirect enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    /// The literal text of a number, already validated against the JSON grammar.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case let (.bool(a), .bool(b)): a == b
        case let (.number(a), .number(b)): a == b
        case let (.string(a), .string(b)): a == b
        case let (.array(a), .array(b)): a == b
        case let (.object(a), .object(b)): a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .null: hasher.combine(0)
        case .bool(let b): hasher.combine(b)
        case .number(let n): hasher.combine(n)
        case .string(let s): hasher.combine(s)
        case .array(let a): hasher.combine(a)
        case .object(let members):
            for (key, value) in members {
                hasher.combine(key)
                hasher.combine(value)
            }
        }
    }

    public static func integer<I: BinaryInteger>(_ value: I) -> JSONValue { .number(String(value)) }

    /// Member lookup: exact name first, then case-insensitively, as Go's decoder matches fields.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        if let exact = members.first(where: { $0.0 == key }) { return exact.1 }
        let lowered = key.lowercased()
        return members.first(where: { $0.0.lowercased() == lowered })?.1
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var int64Value: Int64? {
        if case .number(let n) = self { return Int64(n) }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

// MARK: - Parsing

extension JSONValue {
    /// Deepest nesting accepted; Session Manager payloads nest four levels at most.
    public static let maximumDepth = 64

    /// Parses a complete JSON text (surrounding whitespace allowed).
    public init(parsing buffer: ByteBuffer) throws(PayloadError) {
        self = try buffer.withUnsafeReadableBytes { bytes throws(PayloadError) in
            var parser = JSONParser(bytes: bytes)
            let value = try parser.parseDocument()
            return value
        }
    }

    public init(parsing text: String) throws(PayloadError) {
        try self.init(parsing: ByteBuffer(string: text))
    }
}

struct JSONParser {
    let bytes: UnsafeRawBufferPointer
    var index = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func parseDocument() throws(PayloadError) -> JSONValue {
        let value = try self.parseValue(depth: 0)
        self.skipWhitespace()
        guard self.index == self.bytes.count else { throw self.error("unexpected data after the JSON value") }
        return value
    }

    func error(_ message: String) -> PayloadError {
        .malformedJSON("\(message) at byte \(self.index)")
    }

    mutating func skipWhitespace() {
        while self.index < self.bytes.count {
            switch self.bytes[self.index] {
            case 0x20, 0x09, 0x0A, 0x0D: self.index += 1
            default: return
            }
        }
    }

    mutating func parseValue(depth: Int) throws(PayloadError) -> JSONValue {
        guard depth < JSONValue.maximumDepth else { throw self.error("nesting deeper than \(JSONValue.maximumDepth)") }
        self.skipWhitespace()
        guard self.index < self.bytes.count else { throw self.error("unexpected end of input") }
        switch self.bytes[self.index] {
        case UInt8(ascii: "{"): return try self.parseObject(depth: depth)
        case UInt8(ascii: "["): return try self.parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try self.parseString())
        case UInt8(ascii: "t"): try self.expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try self.expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try self.expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try self.parseNumber()
        default: throw self.error("unexpected character")
        }
    }

    mutating func expectLiteral(_ literal: StaticString) throws(PayloadError) {
        let count = literal.utf8CodeUnitCount
        guard self.bytes.count - self.index >= count else { throw self.error("unexpected end of input") }
        for offset in 0..<count where self.bytes[self.index + offset] != literal.utf8Start[offset] {
            throw self.error("invalid literal")
        }
        self.index += count
    }

    mutating func parseObject(depth: Int) throws(PayloadError) -> JSONValue {
        self.index += 1  // {
        var members: [(String, JSONValue)] = []
        self.skipWhitespace()
        if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "}") {
            self.index += 1
            return .object(members)
        }
        while true {
            self.skipWhitespace()
            guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "\"") else {
                throw self.error("expected a member name")
            }
            let key = try self.parseString()
            self.skipWhitespace()
            guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: ":") else {
                throw self.error("expected ':'")
            }
            self.index += 1
            let value = try self.parseValue(depth: depth + 1)
            members.append((key, value))
            self.skipWhitespace()
            guard self.index < self.bytes.count else { throw self.error("unterminated object") }
            switch self.bytes[self.index] {
            case UInt8(ascii: ","): self.index += 1
            case UInt8(ascii: "}"): self.index += 1; return .object(members)
            default: throw self.error("expected ',' or '}'")
            }
        }
    }

    mutating func parseArray(depth: Int) throws(PayloadError) -> JSONValue {
        self.index += 1  // [
        var elements: [JSONValue] = []
        self.skipWhitespace()
        if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "]") {
            self.index += 1
            return .array(elements)
        }
        while true {
            elements.append(try self.parseValue(depth: depth + 1))
            self.skipWhitespace()
            guard self.index < self.bytes.count else { throw self.error("unterminated array") }
            switch self.bytes[self.index] {
            case UInt8(ascii: ","): self.index += 1
            case UInt8(ascii: "]"): self.index += 1; return .array(elements)
            default: throw self.error("expected ',' or ']'")
            }
        }
    }

    mutating func parseNumber() throws(PayloadError) -> JSONValue {
        let start = self.index
        func digits(_ parser: inout JSONParser) -> Int {
            var count = 0
            while parser.index < parser.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(parser.bytes[parser.index]) {
                parser.index += 1
                count += 1
            }
            return count
        }
        if self.bytes[self.index] == UInt8(ascii: "-") { self.index += 1 }
        guard self.index < self.bytes.count else { throw self.error("invalid number") }
        if self.bytes[self.index] == UInt8(ascii: "0") {
            self.index += 1
        } else if digits(&self) == 0 {
            throw self.error("invalid number")
        }
        if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: ".") {
            self.index += 1
            guard digits(&self) > 0 else { throw self.error("invalid number") }
        }
        if self.index < self.bytes.count, self.bytes[self.index] | 0x20 == UInt8(ascii: "e") {
            self.index += 1
            if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "+") || self.bytes[self.index] == UInt8(ascii: "-") {
                self.index += 1
            }
            guard digits(&self) > 0 else { throw self.error("invalid number") }
        }
        return .number(String(decoding: UnsafeRawBufferPointer(rebasing: self.bytes[start..<self.index]), as: UTF8.self))
    }

    mutating func parseString() throws(PayloadError) -> String {
        self.index += 1  // opening quote
        let start = self.index
        // Fast path: no escapes.
        while self.index < self.bytes.count {
            let byte = self.bytes[self.index]
            if byte == UInt8(ascii: "\"") {
                let text = String(decoding: UnsafeRawBufferPointer(rebasing: self.bytes[start..<self.index]), as: UTF8.self)
                self.index += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            guard byte >= 0x20 else { throw self.error("control character in string") }
            self.index += 1
        }
        var scalars = String.UnicodeScalarView()
        scalars.append(contentsOf: String(decoding: UnsafeRawBufferPointer(rebasing: self.bytes[start..<self.index]), as: UTF8.self).unicodeScalars)
        var pendingStart = self.index
        func flush(_ parser: JSONParser, upTo end: Int) {
            if end > pendingStart {
                scalars.append(contentsOf: String(decoding: UnsafeRawBufferPointer(rebasing: parser.bytes[pendingStart..<end]), as: UTF8.self).unicodeScalars)
            }
        }
        while self.index < self.bytes.count {
            let byte = self.bytes[self.index]
            switch byte {
            case UInt8(ascii: "\""):
                flush(self, upTo: self.index)
                self.index += 1
                return String(scalars)
            case UInt8(ascii: "\\"):
                flush(self, upTo: self.index)
                self.index += 1
                guard self.index < self.bytes.count else { throw self.error("unterminated escape") }
                let escaped = self.bytes[self.index]
                self.index += 1
                switch escaped {
                case UInt8(ascii: "\""): scalars.append("\"")
                case UInt8(ascii: "\\"): scalars.append("\\")
                case UInt8(ascii: "/"): scalars.append("/")
                case UInt8(ascii: "b"): scalars.append("\u{08}")
                case UInt8(ascii: "f"): scalars.append("\u{0C}")
                case UInt8(ascii: "n"): scalars.append("\n")
                case UInt8(ascii: "r"): scalars.append("\r")
                case UInt8(ascii: "t"): scalars.append("\t")
                case UInt8(ascii: "u"):
                    let unit = try self.parseHex4()
                    if (0xD800..<0xDC00).contains(unit) {
                        // High surrogate: a low one must follow, else U+FFFD (as Go does).
                        if self.bytes.count - self.index >= 6, self.bytes[self.index] == UInt8(ascii: "\\"),
                            self.bytes[self.index + 1] == UInt8(ascii: "u")
                        {
                            let save = self.index
                            self.index += 2
                            let low = try self.parseHex4()
                            if (0xDC00..<0xE000).contains(low) {
                                let value = 0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(low) - 0xDC00)
                                scalars.append(Unicode.Scalar(value) ?? "\u{FFFD}")
                            } else {
                                scalars.append("\u{FFFD}")
                                self.index = save
                            }
                        } else {
                            scalars.append("\u{FFFD}")
                        }
                    } else {
                        scalars.append(Unicode.Scalar(UInt32(unit)) ?? "\u{FFFD}")
                    }
                default:
                    throw self.error("invalid escape")
                }
                pendingStart = self.index
            default:
                guard byte >= 0x20 else { throw self.error("control character in string") }
                self.index += 1
            }
        }
        throw self.error("unterminated string")
    }

    mutating func parseHex4() throws(PayloadError) -> UInt16 {
        guard self.bytes.count - self.index >= 4 else { throw self.error("truncated \\u escape") }
        var value: UInt16 = 0
        for _ in 0..<4 {
            guard let nibble = MessageID.hexValue(self.bytes[self.index]) else { throw self.error("invalid \\u escape") }
            value = value << 4 | UInt16(nibble)
            self.index += 1
        }
        return value
    }
}

// MARK: - Writing

extension JSONValue {
    /// Appends compact JSON, escaped as Go's encoding/json escapes it (HTML characters included).
    public func write(into buffer: inout ByteBuffer) {
        switch self {
        case .null: buffer.writeStaticString("null")
        case .bool(let b): buffer.writeStaticString(b ? "true" : "false")
        case .number(let n): buffer.writeString(n)
        case .string(let s): JSONValue.writeString(s, into: &buffer)
        case .array(let elements):
            buffer.writeInteger(UInt8(ascii: "["))
            for (offset, element) in elements.enumerated() {
                if offset > 0 { buffer.writeInteger(UInt8(ascii: ",")) }
                element.write(into: &buffer)
            }
            buffer.writeInteger(UInt8(ascii: "]"))
        case .object(let members):
            buffer.writeInteger(UInt8(ascii: "{"))
            for (offset, member) in members.enumerated() {
                if offset > 0 { buffer.writeInteger(UInt8(ascii: ",")) }
                JSONValue.writeString(member.0, into: &buffer)
                buffer.writeInteger(UInt8(ascii: ":"))
                member.1.write(into: &buffer)
            }
            buffer.writeInteger(UInt8(ascii: "}"))
        }
    }

    public var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        self.write(into: &buffer)
        return buffer
    }

    public var text: String { String(buffer: self.encoded) }

    static func writeString(_ string: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "\""))
        var runStart = string.utf8.startIndex
        var index = runStart
        let utf8 = string.utf8
        func escape(_ replacement: StaticString, _ buffer: inout ByteBuffer) {
            buffer.writeBytes(utf8[runStart..<index])
            buffer.writeStaticString(replacement)
        }
        while index < utf8.endIndex {
            let byte = utf8[index]
            var replacement: StaticString?
            var hexEscape: UInt8?
            switch byte {
            case UInt8(ascii: "\""): replacement = "\\\""
            case UInt8(ascii: "\\"): replacement = "\\\\"
            case UInt8(ascii: "\n"): replacement = "\\n"
            case UInt8(ascii: "\r"): replacement = "\\r"
            case UInt8(ascii: "\t"): replacement = "\\t"
            case 0x00..<0x20, UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "&"): hexEscape = byte
            case 0xE2:
                // U+2028 and U+2029 (E2 80 A8 / E2 80 A9) are escaped by Go for JavaScript's sake.
                let next = utf8.index(after: index)
                if next < utf8.endIndex, utf8[next] == 0x80 {
                    let last = utf8.index(after: next)
                    if last < utf8.endIndex, utf8[last] == 0xA8 || utf8[last] == 0xA9 {
                        buffer.writeBytes(utf8[runStart..<index])
                        buffer.writeStaticString(utf8[last] == 0xA8 ? "\\u2028" : "\\u2029")
                        index = utf8.index(after: last)
                        runStart = index
                        continue
                    }
                }
            default: break
            }
            if let replacement {
                escape(replacement, &buffer)
                index = utf8.index(after: index)
                runStart = index
            } else if let hexEscape {
                buffer.writeBytes(utf8[runStart..<index])
                buffer.writeStaticString("\\u00")
                buffer.writeInteger(MessageID.hexDigits[Int(hexEscape >> 4)])
                buffer.writeInteger(MessageID.hexDigits[Int(hexEscape & 0xF)])
                index = utf8.index(after: index)
                runStart = index
            } else {
                index = utf8.index(after: index)
            }
        }
        buffer.writeBytes(utf8[runStart..<utf8.endIndex])
        buffer.writeInteger(UInt8(ascii: "\""))
    }
}
