import NIOCore
import NIOEmbedded
import NIOWebSocket
import SSMProtocol
import Testing

/// The data channel's own WebSocket framing and masking, checked against a byte-at-a-time
/// reference and against NIO's frame decoder.
@Suite("WebSocket framing and masking")
struct WebSocketFramingTests {
    static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var random = FastRandom(seed: seed)
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }

    @Test func maskMatchesTheByteWiseDefinition() {
        let mask = WebSocketMask(0x37, 0xFA, 0x21, 0x3D)
        for count in 0...70 {
            for keyOffset in 0..<4 {
                let original = Self.bytes(count, seed: UInt64(count * 4 + keyOffset))
                var buffer = ByteBuffer(bytes: original)
                buffer.applyWebSocketMask(mask, keyOffset: keyOffset)
                let expected = original.enumerated().map { index, byte in byte ^ mask[index + keyOffset] }
                #expect(Array(buffer.readableBytesView) == expected, "count \(count), key offset \(keyOffset)")
                buffer.applyWebSocketMask(mask, keyOffset: keyOffset)
                #expect(Array(buffer.readableBytesView) == original)
            }
        }
    }

    @Test(arguments: [0, 1, 125, 126, 127, 1024, 65535, 65536, 70000])
    func framesReadBackThroughNIOsDecoder(payloadLength: Int) throws {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
        let original = Self.bytes(payloadLength, seed: UInt64(payloadLength))
        let payload = ByteBuffer(bytes: original)
        var random = FastRandom(seed: 7)
        for mask in [WebSocketMask(using: &random), nil] {
            for opcode in [WebSocketFrameOpcode.binary, .text] {
                var wire = ByteBuffer()
                let written = wire.writeWebSocketFrame(opcode: opcode, mask: mask, payload: payload)
                #expect(written == wire.readableBytes)
                #expect(written == ByteBuffer.webSocketFrameSize(payloadLength: payloadLength, masked: mask != nil))
                #expect(Array(payload.readableBytesView) == original, "the payload itself stays unmasked")
                try channel.writeInbound(wire)
                let frame = try #require(try channel.readInbound(as: WebSocketFrame.self))
                #expect(frame.fin)
                #expect(frame.opcode == (opcode == .binary ? .binary : .text))
                if let mask {
                    let key = try #require(frame.maskKey)
                    #expect(Array(key) == [mask.b0, mask.b1, mask.b2, mask.b3])
                } else {
                    #expect(frame.maskKey == nil)
                }
                #expect(Array(frame.unmaskedData.readableBytesView) == original)
            }
        }
    }

    /// Every prefix of a frame: the count asked for is exactly what completes the header (so that
    /// `peek` can answer) and then the frame, never a byte of whatever follows.
    @Test(arguments: [0, 5, 125, 126, 300, 65535, 65536, 70000])
    func missingByteCountCompletesExactlyOneFrame(payloadLength: Int) throws {
        var random = FastRandom(seed: 11)
        for mask in [WebSocketMask(using: &random), nil] {
            var wire = ByteBuffer()
            wire.writeWebSocketFrame(opcode: .binary, mask: mask, payload: ByteBuffer(bytes: Self.bytes(payloadLength, seed: 3)))
            let frameSize = wire.readableBytes
            var prefixLength = 0
            var steps = 0
            while prefixLength < frameSize {
                let prefix = wire.getSlice(at: 0, length: prefixLength)!
                let missing = try WebSocketFrameHeader.missingByteCount(in: prefix, maximumPayloadLength: 1 << 20)
                #expect(missing > 0 && prefixLength + missing <= frameSize, "prefix \(prefixLength) of \(frameSize)")
                prefixLength += missing
                steps += 1
            }
            #expect(prefixLength == frameSize)
            #expect(steps <= 3, "first two bytes, rest of the header, payload")
            #expect(try WebSocketFrameHeader.missingByteCount(in: wire, maximumPayloadLength: 1 << 20) == 0)
        }
        var tooLong = ByteBuffer(bytes: [0x82, 127])
        tooLong.writeInteger(UInt64(1 << 21))
        #expect(throws: WebSocketFrameHeader.ParseError.self) {
            try WebSocketFrameHeader.missingByteCount(in: tooLong, maximumPayloadLength: 1 << 20)
        }
    }
}
