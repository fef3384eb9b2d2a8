/// Why a payload's content could not be read.
public struct PayloadError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        case malformedJSON
        case missingField
        case wrongType
        case invalidValue
        case truncated
    }

    public let code: Code
    public let detail: String

    public var description: String { "\(self.code.rawValue): \(self.detail)" }

    @inline(never)
    static func malformedJSON(_ detail: String) -> Self { .init(code: .malformedJSON, detail: "malformed JSON: \(detail)") }

    @inline(never)
    static func missingField(_ name: String, in payload: String) -> Self {
        .init(code: .missingField, detail: "\(payload) has no '\(name)'")
    }

    @inline(never)
    static func wrongType(_ name: String, in payload: String, expected: String) -> Self {
        .init(code: .wrongType, detail: "\(payload).\(name) is not \(expected)")
    }

    @inline(never)
    static func invalidValue(_ name: String, in payload: String, _ reason: String) -> Self {
        .init(code: .invalidValue, detail: "\(payload).\(name): \(reason)")
    }

    @inline(never)
    static func truncated(_ payload: String, needed: Int, got: Int) -> Self {
        .init(code: .truncated, detail: "\(payload) needs \(needed) bytes, got \(got)")
    }
}

/// Field access with errors that name the payload and the field.
struct JSONObjectReader {
    let value: JSONValue
    let payload: String

    init(_ value: JSONValue, payload: String) throws(PayloadError) {
        guard case .object = value else {
            throw PayloadError(code: .wrongType, detail: "\(payload) is not a JSON object")
        }
        self.value = value
        self.payload = payload
    }

    func optional(_ name: String) -> JSONValue? {
        self.value[name]
    }

    func string(_ name: String) throws(PayloadError) -> String {
        guard let member = self.value[name] else { throw .missingField(name, in: self.payload) }
        guard let string = member.stringValue else { throw .wrongType(name, in: self.payload, expected: "a string") }
        return string
    }

    /// Go decodes `null` or an absent member into the zero value.
    func stringOrEmpty(_ name: String) throws(PayloadError) -> String {
        guard let member = self.value[name], !member.isNull else { return "" }
        guard let string = member.stringValue else { throw .wrongType(name, in: self.payload, expected: "a string") }
        return string
    }

    func integer<I: FixedWidthInteger>(_ name: String, as: I.Type = I.self) throws(PayloadError) -> I {
        guard let member = self.value[name] else { throw .missingField(name, in: self.payload) }
        guard case .number(let text) = member, let value = I(text) else {
            throw .wrongType(name, in: self.payload, expected: "an integer in range of \(I.self)")
        }
        return value
    }

    func array(_ name: String) throws(PayloadError) -> [JSONValue] {
        guard let member = self.value[name] else { throw .missingField(name, in: self.payload) }
        guard case .array(let elements) = member else { throw .wrongType(name, in: self.payload, expected: "an array") }
        return elements
    }
}
