import DataChannel
import Foundation
import NIOCore
import SSMProtocol
import Sessions
import TestSupport
import Testing

@testable import LocalSSM

@Suite("Port forwarding over the client data channel, against the emulator", .serialized)
struct PortForwardingTests {
    @Test("Mux mode: concurrent connections through the local port arrive intact both ways")
    func muxConcurrentConnections() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        try await withEmulator { emulator in
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let notices = NoticeLog()
            let handle = try await ForwarderHandle.open(session, emulator: emulator, notices: notices)
            let sizes = [8 << 20, 4 << 20, 1 << 20, 64 * 1024, 1, 0]
            try await withThrowingTaskGroup(of: EchoResult.self) { group in
                for (index, size) in sizes.enumerated() {
                    group.addTask { try await echoThrough(port: handle.port, bytes: size, seed: UInt64(index + 7)) }
                }
                for try await result in group {
                    #expect(result.received == result.sent)
                    #expect(result.receivedSHA256 == result.sentSHA256)
                }
            }
            let stats = try await handle.loop.submit { handle.forwarder.value.channelStatistics }.get()
            print("statistics: \(stats)")
            #expect(notices.text.contains("Port \(handle.port) opened for sessionId \(session.sessionID)."))
            #expect(notices.text.contains("Waiting for connections..."))
            try await handle.terminate()
            let ended = try await handle.ended.get()
            #expect(ended == nil)
        }
    }

    @Test("Under a message-rate limit (stream buffers fill, writes come back short) every stream keeps its byte order")
    func rateLimitedStreamsKeepOrder() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        try await withEmulator { emulator in
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let configuration = DataChannelConfiguration(sendWindow: 64, messagesPerSecond: 3000, messageBurst: 50)
            let handle = try await ForwarderHandle.open(session, emulator: emulator, configuration: configuration, notices: NoticeLog())
            try await withThrowingTaskGroup(of: EchoResult.self) { group in
                for index in 0..<3 {
                    group.addTask { try await echoThrough(port: handle.port, bytes: 1 << 20, seed: UInt64(40 + index)) }
                }
                for try await result in group {
                    #expect(result.received == result.sent)
                    #expect(result.receivedSHA256 == result.sentSHA256)
                }
            }
            try await handle.terminate()
            _ = try await handle.ended.get()
        }
    }

    @Test("A WebSocket dropped by the service mid-transfer is resumed; 16 MiB arrive intact")
    func resumeAfterDrop() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        try await withEmulator { emulator in
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let handle = try await ForwarderHandle.open(session, emulator: emulator, notices: NoticeLog())
            let total = 16 << 20
            let dropped = Mutex(false)
            let result = try await echoThrough(port: handle.port, bytes: total, seed: 99) { received in
                guard received > total / 3 else { return }
                let first = dropped.withLock { was in
                    defer { was = true }
                    return !was
                }
                if first { _ = emulator.server.mgs.dropWebSocket(sessionID: session.sessionID, client: true) }
            }
            #expect(dropped.withLock { $0 })
            #expect(result.received == total)
            #expect(result.receivedSHA256 == result.sentSHA256)
            let reconnects = try await handle.loop.submit { handle.forwarder.value.channelStatistics.reconnects }.get()
            #expect(reconnects >= 1)
            try await handle.terminate()
            _ = try await handle.ended.get()
        }
    }

    @Test("Frames dropped, duplicated, reordered and corrupted by the service: the client's channel heals them")
    func lossyService() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        var spec = FaultSpec()
        (spec.dropRate, spec.duplicateRate, spec.reorderRate, spec.corruptRate) = (0.01, 0.01, 0.01, 0.01)
        let configuration = LocalSSMConfiguration(listenPort: 0, limits: .unlimited, faults: FaultConfiguration(seed: 11, global: spec))
        try await withEmulator(configuration) { emulator in
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let handle = try await ForwarderHandle.open(session, emulator: emulator, notices: NoticeLog())
            let result = try await echoThrough(port: handle.port, bytes: 256 << 10, seed: 5)
            #expect(result.received == result.sent)
            #expect(result.receivedSHA256 == result.sentSHA256)
            let counts = try #require(emulator.server.mgs.relay(session.sessionID)).faultCounts
            #expect(counts.dropped > 0 && counts.duplicated > 0 && counts.reordered > 0 && counts.corrupted > 0, "\(counts)")
            let retransmissions = try await handle.loop.submit { handle.forwarder.value.channelStatistics.retransmissions }.get()
            #expect(retransmissions > 0)
            try await handle.terminate()
            _ = try await handle.ended.get()
        }
    }

    @Test(
        "Messages the agent does not resend in time end the channel with a reason, and its connections close instead of hanging",
        .timeLimit(.minutes(1)))
    func unrecoveredLossEndsTheChannel() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        // Only frames to the client are lost; the agent resends one per round-trip timeout (at
        // least 10 ms), far slower than the 1 ms this client allows, so the first gap ends it.
        var spec = FaultSpec()
        spec.dropRate = 0.05
        spec.direction = .toClient
        let emulatorConfiguration = LocalSSMConfiguration(listenPort: 0, limits: .unlimited, faults: FaultConfiguration(seed: 3, global: spec))
        try await withEmulator(emulatorConfiguration) { emulator in
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let configuration = DataChannelConfiguration(messagesPerSecond: nil, lossRecoveryTimeout: .milliseconds(1))
            let handle = try await ForwarderHandle.open(session, emulator: emulator, configuration: configuration, notices: NoticeLog())
            let total = 4 << 20
            let result = try? await echoThrough(port: handle.port, bytes: total, seed: 8)
            #expect((result?.received ?? 0) < total, "the echo cannot complete once the channel ended")
            let ended = try await handle.ended.get()
            guard case .lostMessagesNotResent(let missing, _)? = ended else {
                Issue.record("ended with \(String(describing: ended))")
                return
            }
            #expect(missing >= 1)
            #expect(ended!.description.contains("lost in transit") && ended!.description.contains("Reconnect"))
        }
    }

    // Bounded, and a stall reports both sides: it once never finished in CI. The cause, found with
    // 64 copies at once (1 run in 3): the second connection, accepted while the first was closing
    // and not yet active, was skipped by the forwarder and never read (`basicBridgeTakesAConnectionNotYetActive`).
    @Test("An agent too old for mux gets basic mode: connections take turns over the one byte stream", .timeLimit(.minutes(2)))
    func basicModeWithOldAgent() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        var configuration = LocalSSMConfiguration(listenPort: 0, limits: .unlimited)
        configuration.instances[0].agentVersion = "3.0.196.0"
        try await withEmulator(configuration) { emulator in
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let notices = NoticeLog()
            let handle = try await ForwarderHandle.open(session, emulator: emulator, notices: notices)
            for index in 0..<2 {
                let result = try await echoThrough(port: handle.port, bytes: 256 << 10, seed: UInt64(20 + index), deadline: .seconds(60))
                if result.received != result.sent {
                    // A stall seen once in CI and never reproduced: say where each side stood.
                    let forwarder = handle.forwarder
                    let summary = try await handle.loop.submit { forwarder.value.stateSummary }.get()
                    let relay = emulator.server.mgs.relayStateSummary(sessionID: session.sessionID) ?? "no relay"
                    let status = emulator.server.registry.session(session.sessionID)?.status.rawValue ?? "gone"
                    let agent = await emulator.agent(for: LocalSSMConfiguration.defaultInstanceID)?.stateSummary(sessionID: session.sessionID)
                    let report = "connection \(index): sent \(result.sent), echoed \(result.received); forwarder: \(summary); "
                        + "service: session \(status), relay \(relay); "
                        + "agent: \(agent ?? "no such session")"
                    Issue.record("\(report)")
                }
                #expect(result.received == result.sent)
                #expect(result.receivedSHA256 == result.sentSHA256)
            }
            #expect(!notices.text.contains("Waiting for connections..."))  // the official client prints it in mux mode only
            try await handle.terminate()
            _ = try await handle.ended.get()
        }
    }

    @Test("A refused destination port is reported, and the session keeps serving")
    func refusedDestination() async throws {
        try await withEmulator { emulator in
            // A port with nothing listening: bind and close to find one.
            let probe = try await EchoServer()
            let port = probe.port
            await probe.close()
            let session = try await startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(port)", "localPortNumber": "0"])
            let notices = NoticeLog()
            let handle = try await ForwarderHandle.open(session, emulator: emulator, notices: notices)
            let result = try await echoThrough(port: handle.port, bytes: 1000, seed: 1)
            #expect(result.received == 0)
            #expect(notices.text.contains("Connection to destination port failed, check SSM Agent logs."))
            try await handle.terminate()
            _ = try await handle.ended.get()
        }
    }
}

import Synchronization
