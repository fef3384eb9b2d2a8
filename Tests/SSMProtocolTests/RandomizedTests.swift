import SSMProtocol
import NIOCore
import Testing

@testable import SSMProtocol

@Suite("Randomized round trips and corruption")
struct RandomizedTests {
    static let seed: UInt64 = 0x5353_4D67_6174_6531

    static func randomMessage(_ rng: inout SplitMix64) -> AgentMessage {
        let length = Int.random(in: 1...(Bool.random(using: &rng) ? 64 : 4096), using: &rng)
        let payload = Self.randomBytes(length, &rng)
        return AgentMessage(
            messageType: MessageType.allCases.randomElement(using: &rng)!,
            schemaVersion: UInt32.random(in: 0...UInt32.max, using: &rng),
            createdDate: UInt64.random(in: 1...UInt64.max, using: &rng),
            sequenceNumber: Int64.random(in: Int64.min...Int64.max, using: &rng),
            flags: AgentMessageFlags(rawValue: rng.next()),
            messageID: MessageID(high: rng.next(), low: rng.next()),
            payloadType: PayloadType.allCases.randomElement(using: &rng)!,
            payload: payload
        )
    }

    static func randomBytes(_ count: Int, _ rng: inout SplitMix64) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(count + 8)
        while buffer.readableBytes < count { buffer.writeInteger(rng.next()) }
        buffer.moveWriterIndex(to: count)
        return buffer
    }

    @Test("5000 random messages: encode then decode is the identity")
    func agentMessageRoundTrip() throws {
        var rng = SplitMix64(seed: Self.seed)
        for iteration in 0..<5000 {
            let message = Self.randomMessage(&rng)
            let frame = try message.encoded()
            #expect(frame.readableBytes == message.encodedLength)
            let decoded = try AgentMessage.decode(frame)
            #expect(decoded == message, "iteration \(iteration), seed \(Self.seed)")
            #expect(MessageID(decoded.messageID.description) == decoded.messageID)
        }
    }

    @Test("random valid v4 ids print and parse back")
    func messageIDs() {
        var rng = SplitMix64(seed: Self.seed)
        for _ in 0..<2000 {
            let id = MessageID.random(using: &rng)
            let text = id.description
            #expect(text.count == 36)
            #expect(Array(text)[14] == "4")
            #expect("89ab".contains(Array(text)[19]))
            #expect(MessageID(text) == id)
        }
    }

    @Test("truncated frames never trap and are rejected")
    func truncations() throws {
        var rng = SplitMix64(seed: Self.seed &+ 1)
        for _ in 0..<300 {
            let frame = try Self.randomMessage(&rng).encoded()
            for cut in [0, 1, 3, 4, 36, 100, 119, 120, frame.readableBytes - 1] where cut < frame.readableBytes {
                let short = frame.getSlice(at: frame.readerIndex, length: cut)!
                let error = #expect(throws: AgentMessageError.self) { try AgentMessage.decode(short) }
                if cut < AgentMessage.headerSize {
                    #expect(error?.code == .truncated)
                }
            }
        }
    }

    @Test("every single-bit flip of a frame is either rejected or decodes to a message that re-encodes to the flipped bytes")
    func bitFlips() throws {
        var rng = SplitMix64(seed: Self.seed &+ 2)
        for _ in 0..<40 {
            var message = Self.randomMessage(&rng)
            message.payload = message.payload.getSlice(at: message.payload.readerIndex, length: min(message.payload.readableBytes, 40))!
            let frame = try message.encoded()
            for bit in 0..<(frame.readableBytes * 8) {
                var flipped = frame
                let offset = bit / 8
                let byte = flipped.getInteger(at: offset, as: UInt8.self)!
                flipped.setInteger(byte ^ (1 << UInt8(bit % 8)), at: offset)
                do {
                    let decoded = try AgentMessage.decode(flipped)
                    // Accepted only if the flip hit a field that stays valid, and nothing was lost.
                    #expect(offset < 80 || (112..<120).contains(offset), "a flipped digest or payload byte was accepted (offset \(offset))")
                    if !decoded.messageType.isPublicationControl && !(4..<36).contains(offset) {
                        #expect(try decoded.encoded() == flipped)
                    }
                } catch {
                    if offset >= 120 || (80..<112).contains(offset) {
                        #expect(error.code == .digestMismatch)
                    }
                }
            }
        }
    }

    @Test("random bytes never trap the AgentMessage decoder")
    func garbage() {
        var rng = SplitMix64(seed: Self.seed &+ 3)
        var accepted = 0
        for _ in 0..<20_000 {
            let buffer = Self.randomBytes(Int.random(in: 0...300, using: &rng), &rng)
            if let _ = try? AgentMessage.decode(buffer) { accepted += 1 }
        }
        #expect(accepted == 0)
    }

    static func randomSmuxFrame(_ rng: inout SplitMix64) -> SmuxFrame {
        let streamID = UInt32.random(in: 0...UInt32.max, using: &rng)
        switch Int.random(in: 0..<4, using: &rng) {
        case 0: return .syn(streamID)
        case 1: return .fin(streamID)
        case 2: return .nop()
        default:
            let length = Int.random(in: 0...(Bool.random(using: &rng) ? 100 : 40_000), using: &rng)
            return .psh(streamID, Self.randomBytes(length, &rng))
        }
    }

    @Test("smux: 3000 random frames survive being streamed in random-sized pieces")
    func smuxRoundTrip() throws {
        var rng = SplitMix64(seed: Self.seed &+ 4)
        let frames = (0..<3000).map { _ in Self.randomSmuxFrame(&rng) }
        var stream = ByteBuffer()
        for frame in frames { try frame.encode(into: &stream) }

        var decoder = SmuxFrameDecoder()
        var pending = ByteBuffer()
        var decoded: [SmuxFrame] = []
        while stream.readableBytes > 0 {
            var piece = stream.readSlice(length: min(stream.readableBytes, Int.random(in: 1...2048, using: &rng)))!
            pending.writeBuffer(&piece)
            while let frame = try decoder.decode(buffer: &pending) { decoded.append(frame) }
        }
        #expect(pending.readableBytes == 0)
        #expect(decoded == frames)
    }

    @Test("smux: random and bit-flipped streams never trap the decoder")
    func smuxGarbage() throws {
        var rng = SplitMix64(seed: Self.seed &+ 5)
        for _ in 0..<3000 {
            var buffer = ByteBuffer()
            let frame = Self.randomSmuxFrame(&rng)
            try frame.encode(into: &buffer)
            let offset = Int.random(in: 0..<min(buffer.readableBytes, 12), using: &rng)
            buffer.setInteger(UInt8.random(in: 0...255, using: &rng), at: offset)
            var decoder = SmuxFrameDecoder(acceptedVersions: 1...2)
            var steps = 0
            while let _ = try? decoder.decode(buffer: &buffer), steps < 10 { steps += 1 }
        }
    }

    @Test("typed payload decoders never trap on mutated JSON")
    func payloadMutations() throws {
        var rng = SplitMix64(seed: Self.seed &+ 6)
        let samples = try ["client_ack", "agent_handshake_request_port", "agent_handshake_request_shell_kms", "client_handshake_response",
            "agent_handshake_complete", "mgs_channel_closed", "client_input_size"].map {
            ByteBuffer(hex: try Vectors.agentMessageCase($0)["payload_hex"] as! String)
        }
        for _ in 0..<5000 {
            var sample = samples.randomElement(using: &rng)!
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let offset = Int.random(in: 0..<sample.readableBytes, using: &rng)
                sample.setInteger(UInt8.random(in: 0...255, using: &rng), at: sample.readerIndex + offset)
            }
            if Bool.random(using: &rng) {
                sample = sample.getSlice(at: sample.readerIndex, length: Int.random(in: 0...sample.readableBytes, using: &rng))!
            }
            _ = try? Acknowledgement(decoding: sample)
            _ = try? HandshakeRequest(decoding: sample)
            _ = try? HandshakeResponse(decoding: sample)
            _ = try? HandshakeComplete(decoding: sample)
            _ = try? ChannelClosed(decoding: sample)
            _ = try? TerminalSize(decoding: sample)
        }
    }
}
