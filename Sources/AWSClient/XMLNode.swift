/// A small XML tree for the Query-protocol answers of EC2 and STS.
///
/// Those documents are plain elements and text (no DTDs, no namespaces that matter, no mixed content), so a
/// few dozen lines parse them; this avoids FoundationXML, which needs libxml2 at run time on Linux.
struct XMLNode: Sendable, Equatable {
    var name: String
    var children: [XMLNode] = []
    var text: String = ""

    /// The first direct child named `name`.
    func child(_ name: String) -> XMLNode? { self.children.first { $0.name == name } }

    /// All direct children named `name`.
    func children(_ name: String) -> [XMLNode] { self.children.filter { $0.name == name } }

    /// Follows a path of direct children: `node["a", "b"]`.
    subscript(_ path: String...) -> XMLNode? {
        var node: XMLNode? = self
        for name in path { node = node?.child(name) }
        return node
    }

    /// The first element named `name` anywhere below (depth first), for error documents whose shape varies.
    func first(named name: String) -> XMLNode? {
        for child in self.children {
            if child.name == name { return child }
            if let found = child.first(named: name) { return found }
        }
        return nil
    }
}

struct XMLParseError: Error, Sendable, CustomStringConvertible {
    var offset: Int
    var problem: String
    var description: String { "malformed XML at byte \(self.offset): \(self.problem)" }
}

extension XMLNode {
    /// Parses a document and returns its root element.
    static func parse(_ bytes: [UInt8]) throws(XMLParseError) -> XMLNode {
        var parser = Parser(bytes: bytes)
        return try parser.document()
    }

    private struct Parser {
        let bytes: [UInt8]
        var index = 0
        /// Documents from AWS are shallow; this bounds recursion on hostile input.
        static let maximumDepth = 64

        init(bytes: [UInt8]) { self.bytes = bytes }

        mutating func document() throws(XMLParseError) -> XMLNode {
            try self.skipMisc()
            guard self.peek(0) == UInt8(ascii: "<") else { throw self.error("expected the root element") }
            return try self.element(depth: 0)
        }

        func peek(_ offset: Int) -> UInt8? {
            self.index + offset < self.bytes.count ? self.bytes[self.index + offset] : nil
        }

        func error(_ problem: String) -> XMLParseError { XMLParseError(offset: self.index, problem: problem) }

        func hasPrefix(_ text: String) -> Bool {
            let utf8 = Array(text.utf8)
            guard self.index + utf8.count <= self.bytes.count else { return false }
            return self.bytes[self.index..<self.index + utf8.count].elementsEqual(utf8)
        }

        mutating func skip(past terminator: String) throws(XMLParseError) {
            while self.index < self.bytes.count {
                if self.hasPrefix(terminator) {
                    self.index += terminator.utf8.count
                    return
                }
                self.index += 1
            }
            throw self.error("unterminated construct, expected \(terminator)")
        }

        /// Whitespace, `<?…?>`, comments and `<!DOCTYPE…>` between elements.
        mutating func skipMisc() throws(XMLParseError) {
            while let byte = self.peek(0) {
                if byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D {
                    self.index += 1
                } else if self.hasPrefix("<?") {
                    try self.skip(past: "?>")
                } else if self.hasPrefix("<!--") {
                    try self.skip(past: "-->")
                } else if self.hasPrefix("<!DOCTYPE") {
                    try self.skip(past: ">")
                } else {
                    return
                }
            }
        }

        mutating func name() throws(XMLParseError) -> String {
            let start = self.index
            while let byte = self.peek(0), !(byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D),
                byte != UInt8(ascii: ">"), byte != UInt8(ascii: "/")
            {
                self.index += 1
            }
            guard self.index > start else { throw self.error("expected a name") }
            return String(decoding: self.bytes[start..<self.index], as: UTF8.self)
        }

        mutating func element(depth: Int) throws(XMLParseError) -> XMLNode {
            guard depth < Self.maximumDepth else { throw self.error("nested too deeply") }
            self.index += 1  // "<"
            var node = XMLNode(name: try self.name())
            // Attributes are not needed by any response we read: skip to the end of the tag, honouring quotes.
            var quote: UInt8?
            while let byte = self.peek(0) {
                if let open = quote {
                    if byte == open { quote = nil }
                } else if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                    quote = byte
                } else if byte == UInt8(ascii: ">") {
                    break
                }
                self.index += 1
            }
            guard self.peek(0) == UInt8(ascii: ">") else { throw self.error("unterminated start tag <\(node.name)>") }
            if self.bytes[self.index - 1] == UInt8(ascii: "/") {
                self.index += 1
                return node
            }
            self.index += 1
            var text: [UInt8] = []
            while true {
                guard let byte = self.peek(0) else { throw self.error("missing </\(node.name)>") }
                if byte != UInt8(ascii: "<") {
                    text.append(byte)
                    self.index += 1
                } else if self.hasPrefix("</") {
                    self.index += 2
                    let closing = try self.name()
                    guard closing == node.name else { throw self.error("</\(closing)> closes <\(node.name)>") }
                    while let space = self.peek(0), space != UInt8(ascii: ">") { self.index += 1 }
                    guard self.peek(0) != nil else { throw self.error("unterminated end tag") }
                    self.index += 1
                    node.text = Self.decodeEntities(String(decoding: text, as: UTF8.self))
                    return node
                } else if self.hasPrefix("<![CDATA[") {
                    self.index += 9
                    let start = self.index
                    try self.skip(past: "]]>")
                    // Entities inside CDATA are literal: protect the ampersands from decoding.
                    let raw = String(decoding: self.bytes[start..<self.index - 3], as: UTF8.self)
                    text.append(contentsOf: raw.replacingOccurrences(of: "&", with: "&amp;").utf8)
                } else if self.hasPrefix("<!--") || self.hasPrefix("<?") {
                    try self.skipMisc()
                } else {
                    node.children.append(try self.element(depth: depth + 1))
                }
            }
        }

        static func decodeEntities(_ text: String) -> String {
            guard text.contains("&") else { return text }
            var result = ""
            var rest = Substring(text)
            while let amp = rest.firstIndex(of: "&") {
                result += rest[..<amp]
                guard let semicolon = rest[amp...].firstIndex(of: ";"), rest.distance(from: amp, to: semicolon) <= 10
                else {
                    result += "&"
                    rest = rest[rest.index(after: amp)...]
                    continue
                }
                let entity = rest[rest.index(after: amp)..<semicolon]
                switch entity {
                case "amp": result += "&"
                case "lt": result += "<"
                case "gt": result += ">"
                case "quot": result += "\""
                case "apos": result += "'"
                default:
                    if entity.hasPrefix("#x"), let code = UInt32(entity.dropFirst(2), radix: 16), let scalar = Unicode.Scalar(code) {
                        result.unicodeScalars.append(scalar)
                    } else if entity.hasPrefix("#"), let code = UInt32(entity.dropFirst()), let scalar = Unicode.Scalar(code) {
                        result.unicodeScalars.append(scalar)
                    } else {
                        result += "&" + entity + ";"
                    }
                }
                rest = rest[rest.index(after: semicolon)...]
            }
            return result + rest
        }
    }
}
