import NIOCore
import Testing

@testable import SSMProtocol

@Suite("Transcripts of the official client and agent")
struct TranscriptTests {
    @Test("every recorded frame decodes to the recorded fields and re-encodes byte-exact", arguments: Vectors.transcriptNames)
    func frames(name: String) throws {
        var count = 0
        for event in try Vectors.transcriptEvents(name) where event["event"] as? String == "frame" {
            guard let hex = event["hex"] as? String else { continue }  // pings carry no AgentMessage
            let frame = ByteBuffer(hex: hex)
            let message = try AgentMessage.decode(frame)
            let decoded = try #require(event["decoded"] as? [String: Any])
            #expect(message.messageType.rawValue == decoded["MessageType"] as! String)
            #expect(message.sequenceNumber == decoded["SequenceNumber"] as! Int64)
            #expect(message.flags.rawValue == decoded["Flags"] as! UInt64)
            #expect(message.payloadType.rawValue == decoded["PayloadType"] as! UInt32)
            #expect(message.messageID.description == decoded["MessageId"] as! String)
            #expect(message.createdDate == decoded["CreatedDate"] as! UInt64)
            #expect(message.payload.hex == decoded["payload_hex"] as! String)
            #expect(try message.encoded() == frame)

            // Typed payloads parse wherever the type says JSON.
            switch (message.messageType, message.payloadType) {
            case (.acknowledge, _): _ = try Acknowledgement(decoding: message.payload)
            case (.channelClosed, _): _ = try ChannelClosed(decoding: message.payload)
            case (.agentSessionState, _): _ = try AgentSessionState(decoding: message.payload)
            case (_, .handshakeRequest): _ = try HandshakeRequest(decoding: message.payload)
            case (_, .handshakeResponse): _ = try HandshakeResponse(decoding: message.payload)
            case (_, .handshakeComplete): _ = try HandshakeComplete(decoding: message.payload)
            case (_, .size): _ = try TerminalSize(decoding: message.payload)
            case (_, .flag): _ = try PortFlag(decoding: message.payload)
            case (_, .exitCode): _ = try ExitCode(decoding: message.payload)
            case (_, .encryptionChallengeRequest), (_, .encryptionChallengeResponse):
                _ = try EncryptionChallenge(decoding: message.payload)
            default: break
            }
            count += 1
        }
        #expect(count > 20)
    }
}
