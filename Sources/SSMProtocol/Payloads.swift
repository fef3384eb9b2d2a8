import NIOCore

/// A payload whose content is a JSON document.
public protocol JSONPayload: Sendable {
    init(json: JSONValue) throws(PayloadError)
    var json: JSONValue { get }
}

extension JSONPayload {
    public init(decoding payload: ByteBuffer) throws(PayloadError) {
        try self.init(json: JSONValue(parsing: payload))
    }

    /// The payload bytes, compact JSON in the member order the official peers use.
    public func encoded() -> ByteBuffer { self.json.encoded }
}

// MARK: - Acknowledge

/// The `acknowledge` payload. Receivers match it by sequence number only.
public struct Acknowledgement: Hashable, Sendable, JSONPayload {
    public var acknowledgedMessageType: MessageType
    public var acknowledgedMessageID: MessageID
    public var acknowledgedSequenceNumber: Int64
    public var isSequentialMessage: Bool

    public init(acknowledging message: AgentMessage) {
        self.init(
            messageType: message.messageType,
            messageID: message.messageID,
            sequenceNumber: message.sequenceNumber
        )
    }

    public init(messageType: MessageType, messageID: MessageID, sequenceNumber: Int64, isSequentialMessage: Bool = true) {
        self.acknowledgedMessageType = messageType
        self.acknowledgedMessageID = messageID
        self.acknowledgedSequenceNumber = sequenceNumber
        self.isSequentialMessage = isSequentialMessage
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "acknowledge")
        let typeName = try object.string("AcknowledgedMessageType")
        guard let type = MessageType(rawValue: typeName) else {
            throw .invalidValue("AcknowledgedMessageType", in: "acknowledge", "'\(typeName)' is not a message type")
        }
        let idText = try object.string("AcknowledgedMessageId")
        guard let id = MessageID(idText) else {
            throw .invalidValue("AcknowledgedMessageId", in: "acknowledge", "not a UUID")
        }
        self.init(
            messageType: type,
            messageID: id,
            sequenceNumber: try object.integer("AcknowledgedMessageSequenceNumber"),
            isSequentialMessage: object.optional("IsSequentialMessage")?.boolValue ?? true
        )
    }

    public var json: JSONValue {
        .object([
            ("AcknowledgedMessageType", .string(self.acknowledgedMessageType.rawValue)),
            ("AcknowledgedMessageId", .string(self.acknowledgedMessageID.description)),
            ("AcknowledgedMessageSequenceNumber", .integer(self.acknowledgedSequenceNumber)),
            ("IsSequentialMessage", .bool(self.isSequentialMessage)),
        ])
    }

    /// Writes the payload straight into `buffer`: acks go out once per stream message, so no JSON tree.
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeStaticString("{\"AcknowledgedMessageType\":\"")
        buffer.writeString(self.acknowledgedMessageType.rawValue)
        buffer.writeStaticString("\",\"AcknowledgedMessageId\":\"")
        self.acknowledgedMessageID.write(into: &buffer)
        buffer.writeStaticString("\",\"AcknowledgedMessageSequenceNumber\":")
        Self.writeDecimal(self.acknowledgedSequenceNumber, into: &buffer)
        buffer.writeStaticString(",\"IsSequentialMessage\":")
        buffer.writeStaticString(self.isSequentialMessage ? "true}" : "false}")
    }

    static func writeDecimal(_ value: Int64, into buffer: inout ByteBuffer) {
        if value < 0 { buffer.writeInteger(UInt8(ascii: "-")) }
        var magnitude = value.magnitude
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for the 19 digits of Int64.min
        withUnsafeMutableBytes(of: &digits) { scratch in
            var index = scratch.count
            repeat {
                index -= 1
                scratch[index] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: scratch[index...]))
        }
    }

    /// Reads an acknowledgement payload. The compact form both official peers (and this one) send is
    /// read in place; anything else goes through the general JSON parser, with the same result.
    public init(decoding payload: ByteBuffer) throws(PayloadError) {
        if let fast = Self.decodeCompact(payload) {
            self = fast
        } else {
            try self.init(json: JSONValue(parsing: payload))
        }
    }

    /// `{"AcknowledgedMessageType":"…","AcknowledgedMessageId":"…","AcknowledgedMessageSequenceNumber":N,"IsSequentialMessage":true|false}`
    /// exactly, no whitespace or escapes; nil for anything else.
    static func decodeCompact(_ payload: ByteBuffer) -> Acknowledgement? {
        payload.withUnsafeReadableBytes { bytes -> Acknowledgement? in
            var position = 0
            func expect(_ literal: StaticString) -> Bool {
                let count = literal.utf8CodeUnitCount
                guard bytes.count - position >= count else { return false }
                let matches = literal.withUTF8Buffer { expected in
                    UnsafeRawBufferPointer(expected).hasSameBytes(as: UnsafeRawBufferPointer(rebasing: bytes[position..<(position + count)]))
                }
                if matches { position += count }
                return matches
            }
            guard expect("{\"AcknowledgedMessageType\":\"") else { return nil }
            let typeStart = position
            while position < bytes.count, bytes[position] != UInt8(ascii: "\""), bytes[position] != UInt8(ascii: "\\") {
                position += 1
            }
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\""),
                let type = MessageType.match(UnsafeRawBufferPointer(rebasing: bytes[typeStart..<position]))
            else { return nil }
            guard expect("\",\"AcknowledgedMessageId\":\""), bytes.count - position >= 36,
                let id = MessageID(utf8: UnsafeRawBufferPointer(rebasing: bytes[position..<(position + 36)]))
            else { return nil }
            position += 36
            guard expect("\",\"AcknowledgedMessageSequenceNumber\":") else { return nil }
            let negative = position < bytes.count && bytes[position] == UInt8(ascii: "-")
            if negative { position += 1 }
            var magnitude: Int64 = 0
            var digits = 0
            while position < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[position]) {
                // 18 digits always fit in Int64; longer numbers take the general path.
                guard digits < 18 else { return nil }
                magnitude = magnitude * 10 + Int64(bytes[position] - UInt8(ascii: "0"))
                digits += 1
                position += 1
            }
            // JSON has no leading zeros ("0" itself aside); the general parser decides those.
            guard digits > 0, !(digits > 1 && bytes[position - digits] == UInt8(ascii: "0")) else { return nil }
            guard expect(",\"IsSequentialMessage\":") else { return nil }
            let sequential: Bool
            if expect("true}") {
                sequential = true
            } else if expect("false}") {
                sequential = false
            } else {
                return nil
            }
            guard position == bytes.count else { return nil }
            return Acknowledgement(
                messageType: type, messageID: id, sequenceNumber: negative ? -magnitude : magnitude, isSequentialMessage: sequential)
        }
    }
}

// MARK: - channel_closed

/// Sent by MGS when the session is over. `output`, when present and non-empty, is shown to the user.
public struct ChannelClosed: Hashable, Sendable, JSONPayload {
    public var messageID: String
    /// An RFC 3339 timestamp string; nobody parses it.
    public var createdDate: String
    public var destinationID: String
    public var sessionID: String
    public var messageType: String
    public var schemaVersion: Int
    /// Absent in the agent's variant of the struct.
    public var output: String?

    public init(
        messageID: String,
        createdDate: String,
        destinationID: String,
        sessionID: String,
        messageType: String = MessageType.channelClosed.rawValue,
        schemaVersion: Int = 1,
        output: String? = ""
    ) {
        self.messageID = messageID
        self.createdDate = createdDate
        self.destinationID = destinationID
        self.sessionID = sessionID
        self.messageType = messageType
        self.schemaVersion = schemaVersion
        self.output = output
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "channel_closed")
        self.init(
            messageID: try object.stringOrEmpty("MessageId"),
            createdDate: try object.stringOrEmpty("CreatedDate"),
            destinationID: try object.stringOrEmpty("DestinationId"),
            sessionID: try object.stringOrEmpty("SessionId"),
            messageType: try object.stringOrEmpty("MessageType"),
            schemaVersion: object.optional("SchemaVersion").flatMap { $0.int64Value }.map { Int($0) } ?? 0,
            output: object.optional("Output")?.stringValue
        )
    }

    public var json: JSONValue {
        var members: [(String, JSONValue)] = [
            ("MessageId", .string(self.messageID)),
            ("CreatedDate", .string(self.createdDate)),
            ("DestinationId", .string(self.destinationID)),
            ("SessionId", .string(self.sessionID)),
            ("MessageType", .string(self.messageType)),
            ("SchemaVersion", .integer(self.schemaVersion)),
        ]
        if let output = self.output { members.append(("Output", .string(output))) }
        return .object(members)
    }
}

// MARK: - agent_session_state

/// The agent's report to MGS: `Connected` on open, `Terminating` when a shell has ended.
public struct AgentSessionState: Hashable, Sendable, JSONPayload {
    public var schemaVersion: Int
    public var sessionState: String
    public var sessionID: String

    public static let connected = "Connected"
    public static let terminating = "Terminating"

    public init(schemaVersion: Int = 1, sessionState: String, sessionID: String) {
        self.schemaVersion = schemaVersion
        self.sessionState = sessionState
        self.sessionID = sessionID
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "agent_session_state")
        self.init(
            schemaVersion: try object.integer("SchemaVersion"),
            sessionState: try object.string("SessionState"),
            sessionID: try object.stringOrEmpty("SessionId")
        )
    }

    public var json: JSONValue {
        .object([
            ("SchemaVersion", .integer(self.schemaVersion)),
            ("SessionState", .string(self.sessionState)),
            ("SessionId", .string(self.sessionID)),
        ])
    }
}

// MARK: - Terminal size (PayloadType 3)

/// The client's terminal size, sent on start and whenever it changes.
public struct TerminalSize: Hashable, Sendable, JSONPayload {
    public var columns: UInt32
    public var rows: UInt32

    /// What the official client reports when stdout is not a terminal.
    public static let fallback = TerminalSize(columns: 300, rows: 100)

    public init(columns: UInt32, rows: UInt32) {
        self.columns = columns
        self.rows = rows
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "terminal size")
        self.init(columns: try object.integer("cols"), rows: try object.integer("rows"))
    }

    public var json: JSONValue {
        .object([("cols", .integer(self.columns)), ("rows", .integer(self.rows))])
    }
}

// MARK: - Flags (PayloadType 10)

/// In-band port-session signals: a 4-byte big-endian value.
public enum PortFlag: UInt32, Hashable, Sendable, CaseIterable {
    /// Basic port forwarding: the local connection went away.
    case disconnectToPort = 1
    /// The user ended a port session.
    case terminateSession = 2
    /// Mux port forwarding: the agent could not dial the destination for a new stream.
    case connectToPortError = 3

    public init(decoding payload: ByteBuffer) throws(PayloadError) {
        guard let value = payload.getInteger(at: payload.readerIndex, as: UInt32.self) else {
            throw .truncated("flag", needed: 4, got: payload.readableBytes)
        }
        guard let flag = PortFlag(rawValue: value) else {
            throw .invalidValue("value", in: "flag", "\(value) is not a known flag (1...3)")
        }
        self = flag
    }

    public func encoded() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(self.rawValue)
        return buffer
    }
}

// MARK: - Exit code (PayloadType 12)

/// `EXIT_CODE: <n>`, the agent's last message of a command session.
public struct ExitCode: Hashable, Sendable {
    public var value: Int32

    public init(_ value: Int32) { self.value = value }

    static let prefix = "EXIT_CODE: "

    public init(decoding payload: ByteBuffer) throws(PayloadError) {
        let text = String(buffer: payload)
        guard text.hasPrefix(Self.prefix),
            let value = Int32(text.dropFirst(Self.prefix.count).trimmingASCIIWhitespace())
        else {
            throw .invalidValue("text", in: "exit code", "expected 'EXIT_CODE: <integer>'")
        }
        self.value = value
    }

    public func encoded() -> ByteBuffer { ByteBuffer(string: Self.prefix + String(self.value)) }
}

extension Substring {
    func trimmingASCIIWhitespace() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\n" || first == "\r" || first == "\t" { result.removeFirst() }
        while let last = result.last, last == " " || last == "\n" || last == "\r" || last == "\t" { result.removeLast() }
        return result
    }
}

// MARK: - Encryption challenge (PayloadTypes 8 and 9)

/// KMS key-possession check: base64 of AES-GCM ciphertext, same shape both ways.
public struct EncryptionChallenge: Hashable, Sendable, JSONPayload {
    public var challenge: String

    public init(challenge: String) { self.challenge = challenge }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "encryption challenge")
        self.init(challenge: try object.string("Challenge"))
    }

    public var json: JSONValue { .object([("Challenge", .string(self.challenge))]) }
}
