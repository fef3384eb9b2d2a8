/// Why a frame could not be decoded or a message could not be encoded.
///
/// `code` is a small, bounded set (usable as a metric label); `description` adds the
/// offending values for logs and users. Neither ever contains payload bytes.
public struct AgentMessageError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        case truncated
        case invalidHeaderLength
        case missingMessageType
        case unknownMessageType
        case missingCreatedDate
        case unknownPayloadType
        case payloadLengthMismatch
        case payloadTooLarge
        case digestMismatch
        case emptyPayload
    }

    public let code: Code
    public let detail: String

    public var description: String { "\(self.code.rawValue): \(self.detail)" }

    @inline(never)
    static func truncated(length: Int) -> Self {
        .init(
            code: .truncated,
            detail: "frame of \(length) bytes is shorter than the \(AgentMessage.headerSize)-byte AgentMessage header"
        )
    }

    @inline(never)
    static func invalidHeaderLength(_ value: UInt32, frameLength: Int) -> Self {
        .init(
            code: .invalidHeaderLength,
            detail: "HeaderLength is \(value) in a \(frameLength)-byte frame; expected \(AgentMessage.headerLength)"
        )
    }

    @inline(never)
    static func missingMessageType() -> Self {
        .init(code: .missingMessageType, detail: "MessageType is blank")
    }

    @inline(never)
    static func unknownMessageType(_ bytes: UnsafeRawBufferPointer) -> Self {
        // Printable ASCII only: the field comes from the network.
        let printable = bytes.prefix(32).map { (0x20...0x7E).contains($0) ? Character(UnicodeScalar($0)) : "?" }
        return .init(code: .unknownMessageType, detail: "MessageType '\(String(printable))' is not a Session Manager message type")
    }

    @inline(never)
    static func missingCreatedDate() -> Self {
        .init(code: .missingCreatedDate, detail: "CreatedDate is 0")
    }

    @inline(never)
    static func unknownPayloadType(_ value: UInt32) -> Self {
        .init(code: .unknownPayloadType, detail: "PayloadType \(value) is not defined (known: 0...12)")
    }

    @inline(never)
    static func payloadLengthMismatch(declared: UInt32, actual: Int) -> Self {
        .init(
            code: .payloadLengthMismatch,
            detail: "PayloadLength says \(declared) bytes but the frame carries \(actual) after the header"
        )
    }

    @inline(never)
    static func payloadTooLarge(_ length: Int, limit: Int) -> Self {
        .init(code: .payloadTooLarge, detail: "payload of \(length) bytes exceeds the limit of \(limit) bytes")
    }

    @inline(never)
    static func digestMismatch() -> Self {
        .init(code: .digestMismatch, detail: "PayloadDigest is not the SHA-256 of the payload (corrupted frame)")
    }

    @inline(never)
    static func emptyPayload(_ type: MessageType) -> Self {
        .init(code: .emptyPayload, detail: "\(type.rawValue) with an empty payload; Session Manager peers never send one")
    }
}
