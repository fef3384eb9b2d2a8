import NIOCore
import SSMProtocol
import Testing

@testable import Mux

/// Protocol errors kill the session for good; everything smux tolerates is tolerated.
@Suite struct ErrorTests {
    static let syn3 = "0100000003000000"
    static let psh3Hello = "010205000300000068656c6c6f"
    static let fin3 = "0101000003000000"

    @Test(arguments: [
        ("0200000003000000", SmuxError.Code.unsupportedVersion),
        ("0105000003000000", SmuxError.Code.unknownCommand),
        ("0104080003000000", SmuxError.Code.commandNotInVersion),  // UPD in a v1 session
        ("0100010003000000ff", SmuxError.Code.unexpectedPayload),  // SYN with data
    ])
    func badFrameKillsTheSession(hex: String, code: SmuxError.Code) throws {
        var server = SmuxSession(role: .server, configuration: .test())
        _ = try server.receive(ByteBuffer(hex: Self.syn3))
        let error = expectSessionError { _ = try server.receive(ByteBuffer(hex: hex)) }
        #expect(error?.code == .protocolError)
        #expect(error?.protocolError?.code == code)
        #expect(error?.isFatal == true)

        // Dead: every later call reports the same error.
        #expect(expectSessionError { _ = try server.receive(ByteBuffer(hex: Self.syn3)) } == error)
        #expect(expectSessionError { _ = try server.openStream() } == error)
        #expect(server.write(ByteBuffer(string: "x"), to: SmuxStreamID(3)) == .sessionFailed)
        let closed = server.closeStream(SmuxStreamID(3))
        #expect(!closed)
        server.queueKeepAlive()
        #expect(!server.hasPendingOutbound)
        #expect(server.nextOutbound(maximumBytes: 1024) == nil)
        #expect(server.streamCount == 0)
        #expect(server.failure == error)
        #expect(server.keepAliveCheck(now: .uptimeNanoseconds(0)) == .sessionFailed(error!))
    }

    @Test func badHeaderSplitAcrossInputsIsCaught() throws {
        var server = SmuxSession(role: .server, configuration: .test())
        #expect(try server.receive(ByteBuffer(hex: "0109")) == [])
        let error = expectSessionError { _ = try server.receive(ByteBuffer(hex: "000003000000")) }
        #expect(error?.protocolError?.code == .unknownCommand)
    }

    @Test func pushToAnUnknownStreamIsDroppedWholeEvenWhenSplit() throws {
        var server = SmuxSession(role: .server, configuration: .test())
        let bytes = ByteBuffer(hex: "010205000900000068656c6c6f" + Self.syn3 + Self.psh3Hello)
        var events: [SmuxEvent] = []
        var rest = bytes
        while rest.readableBytes > 0 {
            try server.receive(rest.readSlice(length: min(4, rest.readableBytes))!, into: &events)
        }
        #expect(
            coalesced(events) == [.streamOpened(SmuxStreamID(3)), .data(SmuxStreamID(3), ByteBuffer(string: "hello"))]
        )
        #expect(server.statistics.droppedDataFrames == 1)
        #expect(server.statistics.droppedDataBytes == 5)
    }

    @Test func emptyPushIsIgnored() throws {
        var server = SmuxSession(role: .server, configuration: .test())
        #expect(try server.receive(ByteBuffer(hex: Self.syn3 + "0102000003000000")) == [.streamOpened(SmuxStreamID(3))])
        #expect(server.statistics.droppedDataFrames == 0)
    }

    @Test func duplicateSYNIsIgnored() throws {
        var server = SmuxSession(role: .server, configuration: .test())
        let events = try server.receive(ByteBuffer(hex: Self.syn3 + Self.psh3Hello + Self.syn3))
        #expect(events == [.streamOpened(SmuxStreamID(3)), .data(SmuxStreamID(3), ByteBuffer(string: "hello"))])
        #expect(server.statistics.duplicateSYNs == 1)
        #expect(server.streamInfo(SmuxStreamID(3))?.counters.bytesReceived == 5)
    }

    @Test func finIsSentOnceAndReceivedOnce() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        let id = try client.openStream()
        let first = client.closeStream(id)
        let second = client.closeStream(id)
        #expect(first)
        #expect(!second)
        #expect(client.drainOutbound().hex == Self.syn3 + Self.fin3)
        let third = client.closeStream(id)
        #expect(!third)
        #expect(!client.hasPendingOutbound)

        var server = SmuxSession(role: .server, configuration: .test())
        let events = try server.receive(ByteBuffer(hex: Self.syn3 + Self.fin3 + Self.fin3 + Self.psh3Hello))
        #expect(events == [.streamOpened(SmuxStreamID(3)), .streamClosedByPeer(SmuxStreamID(3))])
        // Data after the peer's FIN is dropped, so FIN stays the last thing a stream delivers.
        #expect(server.statistics.droppedDataFrames == 1)
        // FIN for a stream nobody knows: ignored.
        #expect(try server.receive(ByteBuffer(hex: "0101000063000000")) == [])
    }

    @Test func writesToUnknownOrClosedStreams() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        #expect(client.write(ByteBuffer(string: "x"), to: SmuxStreamID(3)) == .unknownStream)
        #expect(client.sendBufferFree(SmuxStreamID(3)) == 0)
        #expect(client.streamInfo(SmuxStreamID(3)) == nil)
        let id = try client.openStream()
        #expect(client.write(ByteBuffer(), to: id) == .accepted(0))
        client.closeStream(id)
        #expect(client.write(ByteBuffer(string: "x"), to: id) == .streamClosed)
    }

    @Test func peerMayStillReceiveAfterItsFIN() throws {
        // Half-close as in smux: after the peer's FIN we can still write, and the stream ends when
        // our FIN is out.
        var server = SmuxSession(role: .server, configuration: .test())
        _ = try server.receive(ByteBuffer(hex: Self.syn3 + Self.fin3))
        #expect(server.streamInfo(SmuxStreamID(3))?.state == .remoteClosed)
        #expect(server.write(ByteBuffer(string: "late"), to: SmuxStreamID(3)) == .accepted(4))
        server.closeStream(SmuxStreamID(3))
        #expect(server.streamInfo(SmuxStreamID(3))?.state == .closing)
        #expect(server.drainOutbound().hex == "0102040003000000" + "6c617465" + Self.fin3)
        #expect(server.streamInfo(SmuxStreamID(3)) == nil)
    }

    @Test func streamIDsRunOut() throws {
        var client = SmuxSession(role: .client, configuration: .test())
        client.lastLocalStreamID = UInt32.max - 2
        #expect(try client.openStream() == SmuxStreamID(UInt32.max))
        #expect(expectSessionError { _ = try client.openStream() }?.code == .streamIDsExhausted)
        #expect(expectSessionError { _ = try client.openStream() }?.code == .streamIDsExhausted)
        // Not fatal: existing streams carry on.
        #expect(client.failure == nil)
        #expect(client.write(ByteBuffer(string: "x"), to: SmuxStreamID(UInt32.max)) == .accepted(1))
    }

    @Test func localOpensStopAtTheStreamLimit() throws {
        var client = SmuxSession(role: .client, configuration: .test(maximumStreams: 2))
        _ = try client.openStream()
        _ = try client.openStream()
        let error = expectSessionError { _ = try client.openStream() }
        #expect(error?.code == .tooManyStreams)
        #expect(error?.isFatal == false)
    }

    @Test func peerStreamsBeyondTheLimitAreRefusedWithFIN() throws {
        var server = SmuxSession(role: .server, configuration: .test(maximumStreams: 1))
        let events = try server.receive(ByteBuffer(hex: Self.syn3 + "0100000005000000" + "010201000500000021"))
        #expect(events == [.streamOpened(SmuxStreamID(3)), .streamRefused(SmuxStreamID(5))])
        #expect(server.statistics.refusedStreams == 1)
        #expect(server.statistics.droppedDataFrames == 1)
        #expect(server.drainOutbound().hex == "0101000005000000")
        #expect(server.streamCount == 1)
    }

    @Test func versionTwoWindowUpdatesAreRecognisedWhenAllowed() throws {
        var server = SmuxSession(role: .server, configuration: .test(acceptedVersions: 1...2))
        let upd = "0204080003000000" + "0000000000000100"
        var events: [SmuxEvent] = []
        var bytes = ByteBuffer(hex: Self.syn3 + upd + Self.psh3Hello)
        while bytes.readableBytes > 0 {
            try server.receive(bytes.readSlice(length: min(5, bytes.readableBytes))!, into: &events)
        }
        #expect(
            coalesced(events) == [.streamOpened(SmuxStreamID(3)), .data(SmuxStreamID(3), ByteBuffer(string: "hello"))]
        )
        #expect(server.statistics.windowUpdatesIgnored == 1)
    }

    @Test func configurationIsValidated() {
        #expect(throws: SmuxSessionError.self) { try SmuxConfiguration(version: 2).validate() }
        #expect(throws: SmuxSessionError.self) { try SmuxConfiguration(acceptedVersions: 1...3).validate() }
        #expect(throws: SmuxSessionError.self) { try SmuxConfiguration(maximumFrameSize: 65536).validate() }
        #expect(throws: SmuxSessionError.self) { try SmuxConfiguration(perStreamSendBufferLimit: 0).validate() }
        #expect(throws: SmuxSessionError.self) { try SmuxConfiguration(quantum: 8).validate() }
        #expect(throws: SmuxSessionError.self) { try SmuxConfiguration(maximumStreams: 0).validate() }
        #expect(throws: SmuxSessionError.self) {
            try SmuxConfiguration(keepAlive: .init(interval: .seconds(10), timeout: .seconds(5))).validate()
        }
        #expect(throws: Never.self) { try SmuxConfiguration().validate() }
    }
}
