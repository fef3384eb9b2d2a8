import SSMProtocol
import Mux
import NIOCore
import Testing

/// A client and a server session wired back to back in memory, the smux byte stream cut into
/// random pieces of 1...1024 bytes like data messages. The server echoes every stream.
@Suite struct BackToBackTests {
    /// One end of the harness: what it still has to write and what it has received.
    struct Peer {
        var session: SmuxSession
        var outgoing: [SmuxStreamID: ByteBuffer] = [:]
        /// Streams whose last write was cut short: written again only when reported writable.
        var blocked: Set<SmuxStreamID> = []
        var closeWhenFlushed: Set<SmuxStreamID> = []
        var received: [SmuxStreamID: ByteBuffer] = [:]
        var closedByPeer: Set<SmuxStreamID> = []
        var echo: Bool

        mutating func pumpWrites() {
            for id in self.session.drainWritableStreams() {
                self.blocked.remove(id)
            }
            for (id, data) in self.outgoing where !self.blocked.contains(id) && data.readableBytes > 0 {
                switch self.session.write(data, to: id) {
                case .accepted(let count):
                    self.outgoing[id]!.moveReaderIndex(forwardBy: count)
                    if count < data.readableBytes {
                        self.blocked.insert(id)
                        #expect(self.session.sendBufferFree(id) == 0)
                    }
                default:
                    Issue.record("write to \(id) failed")
                }
            }
            for id in self.closeWhenFlushed where (self.outgoing[id]?.readableBytes ?? 0) == 0 {
                let closed = self.session.closeStream(id)
                #expect(closed)
                self.closeWhenFlushed.remove(id)
            }
        }

        mutating func handle(_ events: [SmuxEvent]) {
            for event in events {
                switch event {
                case .streamOpened(let id):
                    #expect(self.received[id] == nil)
                    self.received[id] = ByteBuffer()
                    if self.echo {
                        self.outgoing[id] = ByteBuffer()
                    }
                case .data(let id, var data):
                    #expect(!self.closedByPeer.contains(id), "data after FIN on \(id)")
                    #expect(data.readableBytes > 0)
                    if self.echo {
                        var copy = data
                        self.outgoing[id]!.writeBuffer(&copy)
                    }
                    self.received[id, default: ByteBuffer()].writeBuffer(&data)
                case .streamClosedByPeer(let id):
                    #expect(self.closedByPeer.insert(id).inserted, "FIN twice on \(id)")
                    if self.echo {
                        self.closeWhenFlushed.insert(id)
                    }
                case .streamRefused, .keepAlive:
                    Issue.record("unexpected \(event)")
                }
            }
        }
    }

    /// Moves one "message" from `from` to `to`, delivered in random pieces.
    static func hop(from: inout Peer, to: inout Peer, rng: inout SplitMix64) throws -> Bool {
        guard var message = from.session.nextOutbound(maximumBytes: Int.random(in: 1...1024, using: &rng)) else {
            return false
        }
        var events: [SmuxEvent] = []
        while message.readableBytes > 0 {
            let piece = message.readSlice(length: Int.random(in: 1...message.readableBytes, using: &rng))!
            try to.session.receive(piece, into: &events)
        }
        to.handle(events)
        return true
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func manyStreamsRandomSizesRandomChunking(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let configuration = SmuxConfiguration.test(
            perStreamSendBufferLimit: 16384,
            quantum: 1500,
            maximumFrameSize: 4096
        )
        var client = Peer(session: SmuxSession(role: .client, configuration: configuration), echo: false)
        var server = Peer(session: SmuxSession(role: .server, configuration: configuration), echo: true)

        var sent: [SmuxStreamID: ByteBuffer] = [:]
        let sizes =
            [0, 1, 7, 8, 9, 1016, 1024, 4095, 4096, 4097, 65536, 100_000]
            + (0..<20).map { _ in Int.random(in: 0...40_000, using: &rng) }
        for size in sizes {
            let id = try client.session.openStream()
            let data = randomBytes(size, using: &rng)
            sent[id] = data
            client.outgoing[id] = data
            client.closeWhenFlushed.insert(id)
        }

        var rounds = 0
        while client.session.streamCount > 0 || server.session.streamCount > 0
            || client.session.hasPendingOutbound || server.session.hasPendingOutbound
        {
            rounds += 1
            guard rounds < 100_000 else {
                Issue.record(
                    "stalled: client \(client.session.streamCount) streams, server \(server.session.streamCount)"
                )
                break
            }
            client.pumpWrites()
            server.pumpWrites()
            _ = try Self.hop(from: &client, to: &server, rng: &rng)
            _ = try Self.hop(from: &server, to: &client, rng: &rng)
        }

        for (id, data) in sent {
            #expect(server.received[id] == data, "stream \(id): client→server bytes differ")
            #expect(client.received[id, default: ByteBuffer()] == data, "stream \(id): echo differs")
            #expect(server.closedByPeer.contains(id))
            #expect(client.closedByPeer.contains(id))
        }
        let clientFinished = client.session.drainFinishedStreams()
        let serverFinished = server.session.drainFinishedStreams()
        #expect(Set(clientFinished.map(\.id)) == Set(sent.keys))
        #expect(Set(serverFinished.map(\.id)) == Set(sent.keys))
        for finished in clientFinished {
            let size = sent[finished.id]!.readableBytes
            #expect(finished.counters == .init(bytesSent: size, bytesReceived: size))
        }
        #expect(client.session.statistics.bytesSent == server.session.statistics.bytesReceived)
        #expect(server.session.statistics.bytesSent == client.session.statistics.bytesReceived)
        #expect(server.session.statistics.droppedDataFrames == 0)
        #expect(client.session.statistics.droppedDataFrames == 0)
    }

    @Test func outputIsTheSameByteStreamWhateverTheMessageSize() throws {
        // Frame boundaries come from the scheduler alone; messages only cut the byte stream.
        func run(_ pieceSize: (inout SplitMix64) -> Int) throws -> ByteBuffer {
            var rng = SplitMix64(seed: 99)
            var session = SmuxSession(
                role: .client,
                configuration: .test(perStreamSendBufferLimit: 50_000, quantum: 700)
            )
            for size in [10, 30_000, 5, 12_345] {
                let id = try session.openStream()
                _ = session.write(randomBytes(size, using: &rng), to: id)
                session.closeStream(id)
            }
            var all = ByteBuffer()
            var pieces = SplitMix64(seed: 7)
            while var piece = session.nextOutbound(maximumBytes: pieceSize(&pieces)) {
                all.writeBuffer(&piece)
            }
            return all
        }
        let whole = try run { _ in Int.max }
        #expect(try run { _ in 1 } == whole)
        #expect(try run { Int.random(in: 1...1024, using: &$0) } == whole)
        let frames = try decodeFrames(whole)
        #expect(frames.filter { $0.command == .fin }.count == 4)
        #expect(frames.allSatisfy { $0.payload.readableBytes + 8 <= 700 })
    }
}
