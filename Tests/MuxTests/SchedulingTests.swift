import Mux
import NIOCore
import SSMProtocol
import Testing

/// Deficit round robin across streams and bounded send buffers.
@Suite struct SchedulingTests {
    /// Feeds 1024-byte messages to a server session until stream `id` has received `count` bytes;
    /// returns how many output bytes that took.
    static func outputBytesUntil(
        _ id: SmuxStreamID,
        received count: Int,
        client: inout SmuxSession,
        server: inout SmuxSession
    ) throws -> Int? {
        var total = 0
        var got = 0
        while let message = client.nextOutbound(maximumBytes: 1024) {
            total += message.readableBytes
            for case .data(id, let data) in try server.receive(message) {
                got += data.readableBytes
            }
            if got >= count { return total }
        }
        return nil
    }

    @Test func interactiveBytesOvertakeAQueuedMegabyte() throws {
        let quantum = 1024
        let configuration = SmuxConfiguration.test(perStreamSendBufferLimit: 2 << 20, quantum: quantum)
        var client = SmuxSession(role: .client, configuration: configuration)
        var server = SmuxSession(role: .server, configuration: configuration)
        let bulk = try client.openStream()
        let interactive = try client.openStream()
        _ = try server.receive(client.drainOutbound())

        #expect(client.write(ByteBuffer(repeating: 0xAB, count: 1 << 20), to: bulk) == .accepted(1 << 20))
        #expect(client.write(ByteBuffer(string: "ls -la\r\n\r\n"), to: interactive) == .accepted(10))
        let took = try #require(try Self.outputBytesUntil(interactive, received: 10, client: &client, server: &server))
        #expect(took <= 2 * quantum + SmuxFrame.headerSize + 10, "10 bytes waited for \(took) bytes of output")

        // And the bulk stream is not starved: all of it arrives.
        for case .data(let id, _) in try server.receive(client.drainOutbound()) {
            #expect(id == bulk)
        }
        #expect(server.streamInfo(bulk)?.counters.bytesReceived == 1 << 20)
    }

    @Test func interactiveBytesOvertakeARunningTransfer() throws {
        let quantum = 1024
        let configuration = SmuxConfiguration.test(perStreamSendBufferLimit: 2 << 20, quantum: quantum)
        var client = SmuxSession(role: .client, configuration: configuration)
        var server = SmuxSession(role: .server, configuration: configuration)
        let bulk = try client.openStream()
        let interactive = try client.openStream()
        _ = try server.receive(client.drainOutbound())
        _ = client.write(ByteBuffer(repeating: 0xAB, count: 1 << 20), to: bulk)
        // The transfer is under way, a frame straddling the message boundary.
        for _ in 0..<10 {
            let message = client.nextOutbound(maximumBytes: 1000)
            _ = try server.receive(try #require(message))
        }
        _ = client.write(ByteBuffer(string: "q"), to: interactive)
        let took = try #require(try Self.outputBytesUntil(interactive, received: 1, client: &client, server: &server))
        #expect(took <= 2 * quantum + SmuxFrame.headerSize + 1)
    }

    @Test func bulkStreamsShareTheOutputEvenly() throws {
        let quantum = 1000
        var client = SmuxSession(
            role: .client,
            configuration: .test(perStreamSendBufferLimit: 1 << 20, quantum: quantum)
        )
        let ids = try (0..<3).map { _ in try client.openStream() }
        _ = client.drainOutbound()
        for id in ids {
            _ = client.write(ByteBuffer(repeating: 1, count: 1 << 20), to: id)
        }
        var output = ByteBuffer()
        for _ in 0..<300 {
            let next = client.nextOutbound(maximumBytes: 1024)
            var message = try #require(next)
            output.writeBuffer(&message)
        }
        var perStream: [UInt32: Int] = [:]
        var decoder = SmuxFrameDecoder()
        while let frame = try decoder.decode(buffer: &output) {
            perStream[frame.streamID, default: 0] += frame.encodedLength
        }
        let shares = ids.map { perStream[$0.rawValue, default: 0] }
        #expect(shares.max()! - shares.min()! <= quantum, "uneven shares \(shares)")
    }

    @Test func framesRespectMaximumFrameSizeAndQuantum() throws {
        var client = SmuxSession(
            role: .client,
            configuration: .test(perStreamSendBufferLimit: 1 << 20, quantum: 100_000, maximumFrameSize: 32768)
        )
        let id = try client.openStream()
        _ = client.write(ByteBuffer(repeating: 7, count: 200_000), to: id)
        let frames = try decodeFrames(client.drainOutbound(maximumBytes: 1024))
        let pushes = frames.filter { $0.command == .psh }
        #expect(pushes.map(\.payload.readableBytes).reduce(0, +) == 200_000)
        #expect(pushes.allSatisfy { $0.payload.readableBytes <= 32768 })
        #expect(pushes.first?.payload.readableBytes == 32768)
    }

    @Test func writesBeyondTheLimitAcceptOnlyTheFreeSpace() throws {
        let limit = 65536
        var client = SmuxSession(role: .client, configuration: .test(perStreamSendBufferLimit: limit, quantum: 4096))
        let id = try client.openStream()
        let other = try client.openStream()
        #expect(client.sendBufferFree(id) == limit)
        #expect(client.write(ByteBuffer(repeating: 1, count: 100_000), to: id) == .accepted(limit))
        #expect(client.sendBufferFree(id) == 0)
        #expect(client.write(ByteBuffer(repeating: 1, count: 10), to: id) == .accepted(0))
        #expect(client.streamInfo(id)?.queuedBytes == limit)
        #expect(client.write(ByteBuffer(repeating: 2, count: 10), to: other) == .accepted(10))

        // Draining below half the limit reports the stream writable, once.
        var drained = 0
        var reportedAt: Int?
        while let message = client.nextOutbound(maximumBytes: 1024) {
            drained += message.readableBytes
            if !client.drainWritableStreams().isEmpty {
                #expect(reportedAt == nil)
                reportedAt = client.streamInfo(id)?.queuedBytes
                #expect(client.sendBufferFree(id) >= limit / 2)
            }
        }
        #expect(reportedAt.map { $0 <= limit / 2 && $0 > limit / 2 - 4096 } == true)
        #expect(client.drainWritableStreams().isEmpty)
        #expect(client.sendBufferFree(id) == limit)
        #expect(client.streamInfo(id)?.counters.bytesSent == limit)
    }

    @Test func aStreamThatNeverFilledUpIsNotReportedWritable() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        let id = try client.openStream()
        _ = client.write(ByteBuffer(repeating: 1, count: 60_000), to: id)
        _ = client.drainOutbound()
        #expect(client.drainWritableStreams().isEmpty)
    }

    @Test func finFollowsTheLastByteOfItsStream() throws {
        var client = SmuxSession(role: .client, configuration: .test(perStreamSendBufferLimit: 1 << 20, quantum: 2000))
        let a = try client.openStream()
        let b = try client.openStream()
        _ = client.write(ByteBuffer(repeating: 1, count: 50_000), to: a)
        client.closeStream(a)
        _ = client.write(ByteBuffer(repeating: 2, count: 3_000), to: b)
        client.closeStream(b)
        #expect(client.write(ByteBuffer(repeating: 1, count: 1), to: a) == .streamClosed)
        #expect(client.sendBufferFree(a) == 0)
        let frames = try decodeFrames(client.drainOutbound())
        for id in [a, b] {
            let own = frames.filter { $0.streamID == id.rawValue }
            #expect(own.first?.command == .syn)
            #expect(own.last?.command == .fin)
            #expect(own.filter { $0.command == .fin }.count == 1)
            #expect(own.dropFirst().dropLast().allSatisfy { $0.command == .psh })
        }
        // b's FIN goes out long before a's data is done.
        let finB = frames.firstIndex { $0.command == .fin && $0.streamID == b.rawValue }!
        let finA = frames.firstIndex { $0.command == .fin && $0.streamID == a.rawValue }!
        #expect(finB < finA)
    }
}
