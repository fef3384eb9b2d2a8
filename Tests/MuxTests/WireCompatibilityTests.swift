import Mux
import NIOCore
import SSMProtocol
import Testing

/// Byte-exact agreement with the xtaci/smux captures in Tests/SSMProtocolTests/Vectors/smux.json.
@Suite struct WireCompatibilityTests {
    // `v1_session_plugin_copy`, frames sent by the client (plugin), in capture order.
    static let clientSYN3 = "0100000003000000"
    static let clientPSH3Hello = "010205000300000068656c6c6f"
    static let clientSYN5 = "0100000005000000"
    static let clientFIN3 = "0101000003000000"
    // `v1_session_agent_copy`, frames sent by the server (agent).
    static let serverPSH3World = "0102060003000000776f726c6421"
    static let serverFIN3 = "0101000003000000"
    // `nop_keepalive`.
    static let nop = "0103000000000000"

    static var clientCapture: String { clientSYN3 + clientPSH3Hello + clientSYN5 + clientFIN3 }

    @Test func clientReproducesPluginCapture() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        var wire = ByteBuffer()
        // The plugin's frames leave as soon as each call is made; flush after each one likewise.
        let first = try client.openStream()
        #expect(first == SmuxStreamID(3))
        var out = client.drainOutbound()
        wire.writeBuffer(&out)
        #expect(client.write(ByteBuffer(string: "hello"), to: first) == .accepted(5))
        out = client.drainOutbound()
        wire.writeBuffer(&out)
        let second = try client.openStream()
        #expect(second == SmuxStreamID(5))
        out = client.drainOutbound()
        wire.writeBuffer(&out)
        let closedClient = client.closeStream(first)
        #expect(closedClient)
        out = client.drainOutbound()
        wire.writeBuffer(&out)
        #expect(wire.hex == Self.clientCapture)
    }

    @Test func queuedAllAtOnceSendsSYNsFirstThenStreamFrames() throws {
        // Without intermediate flushes, control frames (SYN) go ahead of stream data; per-stream
        // order (SYN < PSH < FIN) is kept, which is all smux requires.
        var client = SmuxSession(role: .client, configuration: .test())
        let first = try client.openStream()
        _ = client.write(ByteBuffer(string: "hello"), to: first)
        _ = try client.openStream()
        client.closeStream(first)
        #expect(
            client.drainOutbound().hex == Self.clientSYN3 + Self.clientSYN5 + Self.clientPSH3Hello + Self.clientFIN3
        )
    }

    @Test func framesStraddleTinyOutputs() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        let first = try client.openStream()
        _ = client.write(ByteBuffer(string: "hello"), to: first)
        client.closeStream(first)
        var wire = ByteBuffer()
        var calls = 0
        while var piece = client.nextOutbound(maximumBytes: 3) {
            #expect(piece.readableBytes <= 3)
            wire.writeBuffer(&piece)
            calls += 1
        }
        #expect(wire.hex == Self.clientSYN3 + Self.clientPSH3Hello + Self.clientFIN3)
        #expect(calls == (8 + 13 + 8 + 2) / 3)
    }

    @Test(arguments: [0, 1, 3, 7, 8, 9, 1024])
    func serverDecodesPluginCapture(chunkSize: Int) throws {
        var server = SmuxSession(role: .server, configuration: .test())
        let capture = ByteBuffer(hex: Self.clientCapture)
        var events: [SmuxEvent] = []
        if chunkSize == 0 {
            events = try server.receive(capture)
        } else {
            var rest = capture
            while rest.readableBytes > 0 {
                try server.receive(rest.readSlice(length: min(chunkSize, rest.readableBytes))!, into: &events)
            }
        }
        #expect(
            coalesced(events) == [
                .streamOpened(SmuxStreamID(3)),
                .data(SmuxStreamID(3), ByteBuffer(string: "hello")),
                .streamOpened(SmuxStreamID(5)),
                .streamClosedByPeer(SmuxStreamID(3)),
            ]
        )
        #expect(server.streamInfo(SmuxStreamID(3))?.state == .remoteClosed)
        #expect(server.streamInfo(SmuxStreamID(3))?.counters.bytesReceived == 5)
        #expect(server.streamInfo(SmuxStreamID(5))?.state == .open)
        #expect(server.statistics.framesReceived == 4)
    }

    @Test func serverAnswersLikeTheAgentAndBothSidesFinish() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        var server = SmuxSession(role: .server, configuration: .test())
        let id = try client.openStream()
        _ = client.write(ByteBuffer(string: "hello"), to: id)
        client.closeStream(id)
        _ = try server.receive(client.drainOutbound())
        #expect(client.streamInfo(id)?.state == .localClosed)

        #expect(server.write(ByteBuffer(string: "world!"), to: id) == .accepted(6))
        let closedServer = server.closeStream(id)
        #expect(closedServer)
        let answer = server.drainOutbound()
        #expect(answer.hex == Self.serverPSH3World + Self.serverFIN3)
        // Both FINs crossed: the server forgets the stream once its FIN is out.
        #expect(server.streamCount == 0)
        #expect(server.drainFinishedStreams() == [.init(id: id, counters: .init(bytesSent: 6, bytesReceived: 5))])

        let events = try client.receive(answer)
        #expect(events == [.data(id, ByteBuffer(string: "world!")), .streamClosedByPeer(id)])
        #expect(client.streamCount == 0)
        #expect(client.drainFinishedStreams() == [.init(id: id, counters: .init(bytesSent: 5, bytesReceived: 6))])
    }

    @Test func keepAliveFrames() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        client.queueKeepAlive()
        client.queueKeepAlive()  // coalesced: one NOP pending at most
        #expect(client.drainOutbound().hex == Self.nop)
        var server = SmuxSession(role: .server, configuration: .test())
        #expect(try server.receive(ByteBuffer(hex: Self.nop + Self.nop)) == [.keepAlive, .keepAlive])
        #expect(server.statistics.keepAlivesReceived == 2)
    }

    @Test func streamIDParity() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        var server = SmuxSession(role: .server, configuration: .test())
        #expect(try (0..<3).map { _ in try client.openStream().rawValue } == [3, 5, 7])
        #expect(try (0..<3).map { _ in try server.openStream().rawValue } == [2, 4, 6])
        #expect(server.drainOutbound().hex == "0100000002000000" + "0100000004000000" + "0100000006000000")
    }

    @Test func dataEventsAreSlicesOfTheInput() throws {
        var server = SmuxSession(role: .server, configuration: .test())
        let input = ByteBuffer(hex: Self.clientSYN3 + Self.clientPSH3Hello)
        let events = try server.receive(input)
        guard case .data(_, let payload)? = events.last else {
            Issue.record("no data event")
            return
        }
        let inputBase = input.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        let payloadBase = payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(payloadBase == inputBase + UInt(8 + 8), "payload was copied instead of sliced")
    }
}
