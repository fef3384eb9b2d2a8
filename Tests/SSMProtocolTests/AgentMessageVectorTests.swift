import Crypto
import NIOCore
import Testing

@testable import SSMProtocol

@Suite("AgentMessage golden vectors")
struct AgentMessageVectorTests {
    @Test("positive vectors decode to the listed fields and re-encode byte-exact", arguments: try Vectors.caseIDs(kind: "positive"))
    func positive(id: String) throws {
        let vector = try Vectors.agentMessageCase(id)
        let header = vector["header"] as! [String: Any]
        let serialized = ByteBuffer(hex: vector["serialized_hex"] as! String)

        let message = try AgentMessage.decode(serialized)
        #expect(message.messageType.rawValue == header["MessageType"] as! String)
        #expect(message.schemaVersion == header["SchemaVersion"] as! UInt32)
        #expect(message.createdDate == header["CreatedDate"] as! UInt64)
        #expect(message.sequenceNumber == header["SequenceNumber"] as! Int64)
        #expect(message.flags.rawValue == header["Flags"] as! UInt64)
        #expect(message.messageID.description == header["MessageId"] as! String)
        #expect(message.payloadType.rawValue == header["PayloadType"] as! UInt32)
        #expect(message.payload.readableBytes == header["PayloadLength"] as! Int)
        #expect(message.payload.hex == vector["payload_hex"] as! String)
        let digest = message.payload.withUnsafeReadableBytes { SHA256.hash(data: $0) }
        #expect(ByteBuffer(bytes: Array(digest)).hex == header["PayloadDigest"] as! String)

        // The payload is a view into the frame, not a copy.
        let payloadAddress = message.payload.withUnsafeReadableBytes { $0.baseAddress }
        let frameAddress = serialized.withUnsafeReadableBytes { $0.baseAddress }
        #expect(payloadAddress == frameAddress.map { $0 + AgentMessage.headerSize })

        let reencoded = try message.encoded()
        #expect(reencoded == serialized)
        #expect(reencoded.readableBytes == vector["serialized_length"] as! Int)

        // Building the same message from its parts gives the same bytes.
        let built = AgentMessage(
            messageType: MessageType(rawValue: header["MessageType"] as! String)!,
            schemaVersion: header["SchemaVersion"] as! UInt32,
            createdDate: header["CreatedDate"] as! UInt64,
            sequenceNumber: header["SequenceNumber"] as! Int64,
            flags: AgentMessageFlags(rawValue: header["Flags"] as! UInt64),
            messageID: MessageID(header["MessageId"] as! String)!,
            payloadType: PayloadType(rawValue: header["PayloadType"] as! UInt32)!,
            payload: ByteBuffer(hex: vector["payload_hex"] as! String)
        )
        #expect(try built.encoded() == serialized)
    }

    static let expectedRejections: [String: AgentMessageError.Code] = [
        "neg_header_length_zero": .invalidHeaderLength,
        "neg_header_length_112": .invalidHeaderLength,
        "neg_header_length_huge": .invalidHeaderLength,
        "neg_bad_digest": .digestMismatch,
        "neg_truncated_100": .truncated,
        "neg_truncated_119": .truncated,
        "neg_truncated_3": .truncated,
        "neg_message_type_blank": .missingMessageType,
        "neg_created_date_zero": .missingCreatedDate,
        // Quirks the official parsers accept but a strict decoder refuses: the declared length
        // disagrees with the bytes present, so the frame cannot be trusted.
        "quirk_payload_length_mismatch": .payloadLengthMismatch,
        "quirk_payload_length_zero_bad_digest": .payloadLengthMismatch,
    ]

    @Test("every negative vector is rejected with the right error", arguments: try Vectors.caseIDs(kind: "negative"))
    func negative(id: String) throws {
        let vector = try Vectors.agentMessageCase(id)
        let expected = try #require(Self.expectedRejections[id], "no expectation recorded for \(id)")
        let frame = ByteBuffer(hex: vector["input_hex"] as! String)
        #expect(frame.readableBytes == vector["input_length"] as! Int)
        let error = #expect(throws: AgentMessageError.self) { try AgentMessage.decode(frame) }
        #expect(error?.code == expected, "\(id): \(String(describing: error))")
        #expect(error?.description.isEmpty == false)
    }

    @Test("quirk vectors: accepted where the frame is well-formed, rejected where it lies about its length", arguments: try Vectors.caseIDs(kind: "quirk"))
    func quirk(id: String) throws {
        let vector = try Vectors.agentMessageCase(id)
        let frame = ByteBuffer(hex: vector["input_hex"] as! String)
        if let expected = Self.expectedRejections[id] {
            let error = #expect(throws: AgentMessageError.self) { try AgentMessage.decode(frame) }
            #expect(error?.code == expected)
            return
        }
        // Accepted: our result equals what the official client parser returned.
        let official = vector["plugin_decode"] as! [String: Any]
        let message = try AgentMessage.decode(frame)
        #expect(message.messageType.rawValue == official["MessageType"] as! String)
        #expect(message.sequenceNumber == official["SequenceNumber"] as! Int64)
        #expect(message.flags.rawValue == official["Flags"] as! UInt64)
        #expect(message.messageID.description == official["MessageId"] as! String)
        if id == "quirk_start_publication_minimal" {
            // The official client keeps the header bytes as "payload" (HeaderLength 0); we keep only what follows the header.
            #expect(message.payload.readableBytes == 0)
        } else {
            #expect(message.payload.hex == official["PayloadHex"] as! String)
        }
    }

    @Test("an empty payload is refused by the encoder, as by both official serializers")
    func emptyPayloadEncode() throws {
        let vector = try Vectors.agentMessageCase("empty_payload")
        let header = vector["header"] as! [String: Any]
        let message = AgentMessage(
            messageType: .inputStreamData,
            createdDate: header["CreatedDate"] as! UInt64,
            sequenceNumber: header["SequenceNumber"] as! Int64,
            flags: [],
            messageID: MessageID(header["MessageId"] as! String)!,
            payloadType: .output,
            payload: ByteBuffer()
        )
        let error = #expect(throws: AgentMessageError.self) { try message.encoded() }
        #expect(error?.code == .emptyPayload)
    }

    @Test("agent-style decoding skips the digest, as the official agent does")
    func agentModeSkipsDigest() throws {
        let frame = ByteBuffer(hex: try Vectors.agentMessageCase("neg_bad_digest")["input_hex"] as! String)
        let message = try AgentMessage.decode(frame, options: .init(verifiesDigest: false))
        #expect(String(buffer: message.payload) == "ls\r")
    }

    @Test("oversized payloads are refused before hashing")
    func oversized() throws {
        let message = AgentMessage(
            messageType: .outputStreamData, createdDate: 1, sequenceNumber: 0, flags: [],
            messageID: .zero, payloadType: .output, payload: ByteBuffer(repeating: 7, count: 4096))
        let frame = try message.encoded()
        let error = #expect(throws: AgentMessageError.self) {
            try AgentMessage.decode(frame, options: .init(maximumPayloadLength: 1024))
        }
        #expect(error?.code == .payloadTooLarge)
        #expect(try AgentMessage.decode(frame, options: .init(maximumPayloadLength: 4096)).payload.readableBytes == 4096)
    }

    @Test("unknown message and payload types are typed errors that name the value")
    func unknownTypes() throws {
        let good = ByteBuffer(hex: try Vectors.agentMessageCase("client_input_keystrokes")["serialized_hex"] as! String)

        var badType = good
        badType.setString("bogus_message_type              ", at: 4)
        let typeError = #expect(throws: AgentMessageError.self) { try AgentMessage.decode(badType) }
        #expect(typeError?.code == .unknownMessageType)
        #expect(typeError?.description.contains("bogus_message_type") == true)

        var badPayloadType = good
        badPayloadType.setInteger(UInt32(99), at: 112)
        let payloadError = #expect(throws: AgentMessageError.self) { try AgentMessage.decode(badPayloadType) }
        #expect(payloadError?.code == .unknownPayloadType)
        #expect(payloadError?.description.contains("99") == true)
    }

    @Test("MessageId halves are swapped on the wire")
    func messageIDByteOrder() throws {
        let id = MessageID("00112233-4455-6677-8899-aabbccddeeff")!
        let message = AgentMessage(
            messageType: .inputStreamData, createdDate: 1, sequenceNumber: 0, flags: [],
            messageID: id, payloadType: .output, payload: ByteBuffer(string: "x"))
        let frame = try message.encoded()
        #expect(frame.getSlice(at: 64, length: 16)!.hex == "8899aabbccddeeff0011223344556677")
        #expect(MessageID("00112233-4455-6677-8899-AABBCCDDEEFF") == id)
        #expect(MessageID("00112233-4455-6677-8899-aabbccddeef") == nil)
        #expect(MessageID("00112233x4455-6677-8899-aabbccddeeff") == nil)
        #expect(MessageID("00112233-4455-6677-8899-aabbccddeeffa") == nil)
    }
}
