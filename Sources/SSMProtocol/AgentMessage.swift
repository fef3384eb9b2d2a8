import Crypto
import NIOCore

/// One Session Manager data-channel message: a fixed 120-byte big-endian header and a payload.
///
/// The payload is a `ByteBuffer` slice of the frame it was decoded from: decoding copies nothing.
/// The digest is not stored: it is computed when encoding and checked when decoding.
public struct AgentMessage: Hashable, Sendable {
    /// Offset of the PayloadLength field, which is what the HeaderLength field holds.
    public static let headerLength: UInt32 = 116
    /// Bytes before the payload.
    public static let headerSize = 120

    public var messageType: MessageType
    public var schemaVersion: UInt32
    /// Milliseconds since the Unix epoch.
    public var createdDate: UInt64
    public var sequenceNumber: Int64
    public var flags: AgentMessageFlags
    public var messageID: MessageID
    public var payloadType: PayloadType
    public var payload: ByteBuffer

    public init(
        messageType: MessageType,
        schemaVersion: UInt32 = 1,
        createdDate: UInt64,
        sequenceNumber: Int64,
        flags: AgentMessageFlags,
        messageID: MessageID,
        payloadType: PayloadType,
        payload: ByteBuffer
    ) {
        self.messageType = messageType
        self.schemaVersion = schemaVersion
        self.createdDate = createdDate
        self.sequenceNumber = sequenceNumber
        self.flags = flags
        self.messageID = messageID
        self.payloadType = payloadType
        self.payload = payload
    }

    /// Size of the encoded frame.
    public var encodedLength: Int { Self.headerSize + self.payload.readableBytes }

    /// Appends the encoded frame to `buffer`.
    ///
    /// Refuses an empty payload, as both official serializers do: no peer ever sends one.
    public func encode(into buffer: inout ByteBuffer) throws(AgentMessageError) {
        guard self.payload.readableBytes > 0 else { throw .emptyPayload(self.messageType) }
        let digest = self.payload.withUnsafeReadableBytes { SHA256.hash(data: $0) }
        buffer.reserveCapacity(minimumWritableBytes: self.encodedLength)
        buffer.writeInteger(Self.headerLength)
        Self.writeMessageType(self.messageType, into: &buffer)
        buffer.writeMultipleIntegers(
            self.schemaVersion,
            self.createdDate,
            self.sequenceNumber,
            self.flags.rawValue,
            self.messageID.low,
            self.messageID.high
        )
        digest.withUnsafeBytes { _ = buffer.writeBytes($0) }
        buffer.writeMultipleIntegers(self.payloadType.rawValue, UInt32(self.payload.readableBytes))
        var payload = self.payload
        buffer.writeBuffer(&payload)
    }

    /// The encoded frame in a buffer of its own.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) throws(AgentMessageError) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: self.encodedLength)
        try self.encode(into: &buffer)
        return buffer
    }

    static func writeMessageType(_ type: MessageType, into buffer: inout ByteBuffer) {
        let written = buffer.writeString(type.rawValue)
        buffer.writeRepeatingByte(UInt8(ascii: " "), count: MessageType.fieldLength - written)
    }
}

extension AgentMessage {
    /// Limits and checks applied when decoding untrusted frames.
    public struct DecodingOptions: Hashable, Sendable {
        /// Frames with a larger payload are rejected before any hashing.
        public var maximumPayloadLength: Int
        /// The official client verifies the digest, the agent does not. Turn off only to mimic the agent.
        public var verifiesDigest: Bool

        public init(maximumPayloadLength: Int = 1 << 20, verifiesDigest: Bool = true) {
            self.maximumPayloadLength = maximumPayloadLength
            self.verifiesDigest = verifiesDigest
        }
    }

    /// Decodes one whole frame (one WebSocket message).
    ///
    /// Stricter than the official parsers, which trust HeaderLength and PayloadLength blindly: a
    /// frame must be exactly header + PayloadLength bytes with HeaderLength 116. `start_publication`
    /// and `pause_publication` skip the header checks, as the official client does for them.
    public static func decode(
        _ frame: ByteBuffer,
        options: DecodingOptions = DecodingOptions()
    ) throws(AgentMessageError) -> AgentMessage {
        let start = frame.readerIndex
        let length = frame.readableBytes
        guard length >= Self.headerSize else { throw .truncated(length: length) }
        // Every read below is inside the 120 bytes just checked.
        let headerLength = frame.getInteger(at: start, as: UInt32.self)!
        let (schemaVersion, createdDate, sequenceNumber, flags, low, high) = frame.getMultipleIntegers(
            at: start + 36,
            as: (UInt32, UInt64, Int64, UInt64, UInt64, UInt64).self
        )!
        let (rawPayloadType, payloadLength) = frame.getMultipleIntegers(at: start + 112, as: (UInt32, UInt32).self)!

        let messageType = try frame.withUnsafeReadableBytes { bytes throws(AgentMessageError) -> MessageType in
            let field = UnsafeRawBufferPointer(rebasing: bytes[4..<(4 + MessageType.fieldLength)])
            let trimmed = Self.trimMessageType(field)
            guard !trimmed.isEmpty else { throw .missingMessageType() }
            guard let type = MessageType.match(trimmed) else { throw .unknownMessageType(trimmed) }
            return type
        }

        let payloadBytes = length - Self.headerSize
        guard payloadBytes <= options.maximumPayloadLength else {
            throw .payloadTooLarge(payloadBytes, limit: options.maximumPayloadLength)
        }
        let payload = frame.getSlice(at: start + Self.headerSize, length: payloadBytes)!

        // MGS flow-control messages: the official client acts on their type alone and skips the
        // header checks, so a minimal frame with HeaderLength and CreatedDate 0 is still obeyed.
        let isPublicationControl = messageType.isPublicationControl
        guard headerLength == Self.headerLength || isPublicationControl else {
            throw .invalidHeaderLength(headerLength, frameLength: length)
        }
        guard createdDate != 0 || isPublicationControl else { throw .missingCreatedDate() }
        guard let payloadType = PayloadType(rawValue: rawPayloadType) ?? (isPublicationControl ? .undefined : nil) else {
            throw .unknownPayloadType(rawPayloadType)
        }
        guard Int(payloadLength) == payloadBytes else {
            throw .payloadLengthMismatch(declared: payloadLength, actual: payloadBytes)
        }
        if options.verifiesDigest && payloadBytes > 0 {
            let matches = frame.withUnsafeReadableBytes { bytes in
                let digest = SHA256.hash(data: UnsafeRawBufferPointer(rebasing: bytes[Self.headerSize...]))
                return digest.withUnsafeBytes { computed in
                    computed.elementsEqual(UnsafeRawBufferPointer(rebasing: bytes[80..<112]))
                }
            }
            guard matches else { throw .digestMismatch() }
        }

        return AgentMessage(
            messageType: messageType,
            schemaVersion: schemaVersion,
            createdDate: createdDate,
            sequenceNumber: sequenceNumber,
            flags: AgentMessageFlags(rawValue: flags),
            messageID: MessageID(high: high, low: low),
            payloadType: payloadType,
            payload: payload
        )
    }

    /// Strips NULs, then whitespace, from both ends, as both official parsers do.
    static func trimMessageType(_ field: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var lower = field.startIndex
        var upper = field.endIndex
        while lower < upper, field[lower] == 0 { lower += 1 }
        while upper > lower, field[upper - 1] == 0 { upper -= 1 }
        // Whitespace as Go's TrimSpace sees ASCII: space, \t, \n, \v, \f, \r.
        while lower < upper, field[lower] == 0x20 || (field[lower] &- 0x09) <= 4 { lower += 1 }
        while upper > lower, field[upper - 1] == 0x20 || (field[upper - 1] &- 0x09) <= 4 { upper -= 1 }
        return UnsafeRawBufferPointer(rebasing: field[lower..<upper])
    }
}
