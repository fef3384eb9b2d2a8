import DataChannel
import Mux
import NIOCore
import NIOPosix
import SSMProtocol
import Sessions
import TestSupport
import Testing

@testable import LocalSSM

@Suite("MuxConnection against the emulator")
struct MuxConnectionTests {
    @Test("A write cut short hears muxStreamWritable after it returns, never inside it, even when the stream drains at once")
    func writableComesAfterTheShortWrite() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        try await withEmulator { emulator in
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let (bound, started) = try await loop.submit {
                let channel = try DataChannel(
                    streamURL: session.streamURL, token: session.token, sessionID: session.sessionID, clientID: DataChannel.uuid(),
                    configuration: DataChannelConfiguration(messagesPerSecond: nil), eventLoop: loop, renewToken: nil)
                let waiter = SessionStartWaiter(channel: channel)
                channel.connect().whenFailure { _ in }
                return (NIOLoopBound(channel, eventLoop: loop), waiter.started)
            }.get()
            let type = try await started.get()
            #expect(type.isPort)
            // The channel is open and idle, with a window far larger than one stream's send buffer:
            // the write below is cut short at the buffer's limit, and the pump inside it sends all
            // of that at once, so the stream has drained before `write` returns.
            let (taken, notifiedInside, mux) = try await loop.submit {
                let mux = MuxConnection(channel: bound.value, session: type)
                let peer = RecordingPeer()
                let id = try mux.openStream(peer: peer)
                var data = ByteBuffer()
                data.writeRepeatingByte(0x5A, count: 256 << 10)
                peer.insideWrite = true
                let taken = mux.write(data, to: id)
                peer.insideWrite = false
                return (taken, peer.notifiedInsideWrite, NIOLoopBound((mux, peer), eventLoop: loop))
            }.get()
            #expect(taken < 256 << 10, "the write should be cut short at the stream's send buffer")
            #expect(notifiedInside == 0, "muxStreamWritable arrived while the write was still running")
            let notified = try await loop.submit { () -> Int in
                mux.value.1.notified
            }.get()
            #expect(notified == 1, "the short write is followed by one muxStreamWritable")
            try await loop.submit { mux.value.0.channel.close() }.get()
        }
    }
}

final class RecordingPeer: MuxStreamPeer {
    var insideWrite = false
    var notified = 0
    var notifiedInsideWrite = 0
    func muxStreamReceived(_ data: ByteBuffer) {}
    func muxStreamClosedByAgent() {}
    func muxStreamWritable() {
        self.notified += 1
        if self.insideWrite { self.notifiedInsideWrite += 1 }
    }
    func muxStreamFailed(_ reason: String) {}
    var muxStreamCanReceive: Bool { true }
}
