import NIOCore
import NIOEmbedded
import NIOWebSocket
import SSMProtocol
import Testing
import WebSocketTransport

/// The frame codec against frames NIO's own encoder and decoder write and read.
@Suite("WebSocket frame codec")
struct WebSocketFrameCodecTests {
    static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var random = FastRandom(seed: seed)
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }

    /// Frames as NIO writes them: one buffer holding header and payload.
    static func wire(_ frames: [WebSocketFrame]) throws -> ByteBuffer {
        let encoder = EmbeddedChannel(handler: WebSocketFrameEncoder())
        defer { _ = try? encoder.finish() }
        var wire = ByteBuffer()
        for frame in frames {
            try encoder.writeOutbound(frame)
            while var part = try encoder.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&part) }
        }
        return wire
    }

    static func payload(of message: WebSocketMessage?) -> [UInt8]? {
        switch message {
        case .binary(let data), .text(let data), .ping(let data), .pong(let data): Array(data.readableBytesView)
        case nil: nil
        }
    }

    /// NIO's reading of what the codec wrote.
    static func decodedByNIO(_ wire: ByteBuffer) throws -> [WebSocketFrame] {
        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
        defer { _ = try? decoder.finish() }
        try decoder.writeInbound(wire)
        var frames: [WebSocketFrame] = []
        while let frame = try decoder.readInbound(as: WebSocketFrame.self) { frames.append(frame) }
        return frames
    }

    @Test(arguments: [0, 1, 125, 126, 127, 1024, 65535, 65536, 70000])
    func framesArriveWholeWhateverTheReadBoundaries(payloadLength: Int) throws {
        let original = Self.bytes(payloadLength, seed: UInt64(payloadLength))
        for masked in [false, true] {
            let key: WebSocketMaskingKey? = masked ? WebSocketMaskingKey([0x11, 0x93, 0x00, 0xFE]) : nil
            // NIO's encoder masks the payload when the frame has a key.
            let frame = WebSocketFrame(fin: true, opcode: .binary, maskKey: key, data: ByteBuffer(bytes: original))
            let text = WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: "after"))
            let wire = try Self.wire([frame, text])
            // All at once, then in reads of 1, 7 and 1000 bytes.
            for step in [wire.readableBytes, 1, 7, 1000] {
                let channel = EmbeddedChannel(handler: WebSocketFrameCodec(role: .server, maximumMessageSize: 1 << 20))
                var rest = wire
                while rest.readableBytes > 0 { try channel.writeInbound(rest.readSlice(length: min(step, rest.readableBytes))!) }
                let first = try channel.readInbound(as: WebSocketMessage.self)
                guard case .binary = first else { Issue.record("expected binary, got \(String(describing: first))"); return }
                #expect(Self.payload(of: first) == original ? true : false, "masked \(masked), step \(step)")
                let second = try channel.readInbound(as: WebSocketMessage.self)
                guard case .text = second else { Issue.record("expected text, got \(String(describing: second))"); return }
                #expect(Self.payload(of: second) == Array("after".utf8))
                #expect(Self.payload(of: try channel.readInbound(as: WebSocketMessage.self)) == nil)
                _ = try channel.finish()
            }
        }
    }

    @Test func fragmentsAreJoinedAndAPingBetweenThemIsAnswered() throws {
        let channel = EmbeddedChannel(handler: WebSocketFrameCodec(role: .client, maximumMessageSize: 1 << 20))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(try Self.wire([
            WebSocketFrame(fin: false, opcode: .binary, data: ByteBuffer(string: "one ")),
            WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer(string: "are you there")),
            WebSocketFrame(fin: false, opcode: .continuation, data: ByteBuffer(string: "two ")),
            WebSocketFrame(fin: true, opcode: .continuation, data: ByteBuffer(string: "three")),
        ]))
        let message = try channel.readInbound(as: WebSocketMessage.self)
        guard case .binary = message else { Issue.record("expected one binary message, got \(String(describing: message))"); return }
        #expect(Self.payload(of: message) == Array("one two three".utf8))
        #expect(Self.payload(of: try channel.readInbound(as: WebSocketMessage.self)) == nil)
        let pong = try Self.decodedByNIO(try #require(try channel.readOutbound(as: ByteBuffer.self)))
        #expect(pong.count == 1 && pong[0].opcode == .pong)
        #expect(pong.first.map { Array($0.unmaskedData.readableBytesView) } == Array("are you there".utf8))
        #expect(pong.first?.maskKey != nil, "a client masks its pong")
    }

    @Test func outgoingMessagesAreMaskedOnlyByClients() throws {
        let original = Self.bytes(3000, seed: 3)
        for role in [WebSocketFrameCodec.Role.client, .server] {
            let channel = EmbeddedChannel(handler: WebSocketFrameCodec(role: role, maximumMessageSize: 1 << 20))
            try channel.writeOutbound(WebSocketMessage.binary(ByteBuffer(bytes: original)))
            try channel.writeOutbound(WebSocketMessage.text(ByteBuffer(string: "{}")))
            try channel.writeOutbound(WebSocketMessage.ping(ByteBuffer(string: "keepalive")))
            var wire = ByteBuffer()
            while var part = try channel.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&part) }
            let frames = try Self.decodedByNIO(wire)
            #expect(frames.map(\.opcode) == [.binary, .text, .ping])
            #expect(frames.allSatisfy { ($0.maskKey != nil) == (role == .client) })
            #expect(frames.first.map { Array($0.unmaskedData.readableBytesView) } == original ? true : false)
            _ = try channel.finish()
        }
    }

    /// What the codec wrote before it closed, and whether it closed.
    /// The violation the codec reported to the handlers after it (if any) is checked against the close code it sent.
    static func reaction(toInbound wire: ByteBuffer, maximumMessageSize: Int = 1 << 20) throws -> (closeCode: UInt16?, delivered: Int, closed: Bool) {
        let channel = EmbeddedChannel(handler: WebSocketFrameCodec(role: .server, maximumMessageSize: maximumMessageSize))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var reported: WebSocketProtocolViolation?
        do {
            try channel.writeInbound(wire)
        } catch let violation as WebSocketProtocolViolation {
            reported = violation
        }
        var delivered = 0
        while try channel.readInbound(as: WebSocketMessage.self) != nil { delivered += 1 }
        var code: UInt16?
        if let out = try channel.readOutbound(as: ByteBuffer.self) {
            let frames = try Self.decodedByNIO(out)
            #expect(frames.map(\.opcode) == [.connectionClose])
            code = frames.first?.unmaskedData.getInteger(at: frames.first!.unmaskedData.readerIndex, as: UInt16.self)
        }
        channel.embeddedEventLoop.run()
        if let reported { #expect(code == reported.code.rawValue, "reported \(reported), sent close code \(String(describing: code))") }
        let closed = !channel.isActive
        _ = try? channel.finish()
        return (code, delivered, closed)
    }

    @Test func anOverlongMessageIsRefusedWith1009() throws {
        let big = WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(bytes: Self.bytes(2000, seed: 1)))
        let whole = try Self.reaction(toInbound: try Self.wire([big]), maximumMessageSize: 1000)
        #expect(whole.closeCode == 1009 && whole.delivered == 0 && whole.closed)
        // Its header alone is enough to refuse it: nothing of the payload is buffered first.
        var header = try Self.wire([big])
        header = header.readSlice(length: 4)!
        let early = try Self.reaction(toInbound: header, maximumMessageSize: 1000)
        #expect(early.closeCode == 1009 && early.closed)
        let fragments = try Self.wire([
            WebSocketFrame(fin: false, opcode: .binary, data: ByteBuffer(bytes: Self.bytes(600, seed: 2))),
            WebSocketFrame(fin: true, opcode: .continuation, data: ByteBuffer(bytes: Self.bytes(600, seed: 3))),
        ])
        let joined = try Self.reaction(toInbound: fragments, maximumMessageSize: 1000)
        #expect(joined.closeCode == 1009 && joined.delivered == 0 && joined.closed)
    }

    @Test func protocolErrorsAreRefusedWith1002() throws {
        let cases: [(String, WebSocketFrame)] = [
            ("reserved bit", WebSocketFrame(fin: true, rsv1: true, opcode: .binary, data: ByteBuffer(string: "x"))),
            ("continuation first", WebSocketFrame(fin: true, opcode: .continuation, data: ByteBuffer(string: "x"))),
            ("fragmented ping", WebSocketFrame(fin: false, opcode: .ping, data: ByteBuffer(string: "x"))),
            ("unknown opcode", WebSocketFrame(fin: true, opcode: WebSocketOpcode(encodedWebSocketOpcode: 0x3)!, data: ByteBuffer(string: "x"))),
        ]
        for (name, frame) in cases {
            let reaction = try Self.reaction(toInbound: try Self.wire([frame]))
            #expect(reaction.closeCode == 1002 && reaction.delivered == 0 && reaction.closed, "\(name)")
        }
    }

    @Test func aPeersCloseIsEchoedAndTheConnectionCloses() throws {
        var status = ByteBuffer()
        status.writeInteger(UInt16(1001))
        let reaction = try Self.reaction(toInbound: try Self.wire([WebSocketFrame(fin: true, opcode: .connectionClose, data: status)]))
        #expect(reaction.closeCode == 1001 && reaction.delivered == 0 && reaction.closed)

        // The handlers behind the codec are told, with the peer's status.
        let seen = EventRecorder()
        let channel = EmbeddedChannel(handlers: [WebSocketFrameCodec(role: .client, maximumMessageSize: 1 << 20), seen])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(try Self.wire([WebSocketFrame(fin: true, opcode: .connectionClose, data: status)]))
        #expect(seen.closes == [1001])
        _ = try? channel.finish()
    }

    final class EventRecorder: ChannelInboundHandler {
        typealias InboundIn = WebSocketMessage
        var closes: [UInt16?] = []
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let close = event as? WebSocketClosedByPeer { self.closes.append(close.status) }
        }
    }

    @Test func messagesFitNIOAnysInlineStorage() {
        // Larger than three words, every message sent down a pipeline would be boxed (a malloc).
        #expect(MemoryLayout<WebSocketMessage>.size <= 3 * MemoryLayout<Int>.size)
    }
}
