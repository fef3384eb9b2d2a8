import Foundation
import NIOCore
import NIOPosix
import SSMProtocol
import WebSocketTransport
import TestSupport
import Testing

@testable import LocalSSM

@Suite("Fault injection, reconnects and the service's timers, through the real emulator on loopback", .serialized)
struct FaultTests {
    static func configuration(faults: FaultConfiguration = FaultConfiguration(), _ adjust: (inout LimitsProfile) -> Void = { _ in })
        -> LocalSSMConfiguration
    {
        var limits = LimitsProfile.unlimited
        adjust(&limits)
        return LocalSSMConfiguration(listenPort: 0, limits: limits, faults: faults)
    }

    // MARK: Frame faults

    @Test("1% of frames dropped, duplicated, reordered and corrupted both ways: a mux transfer still arrives intact")
    func lossyFrames() async throws {
        var spec = FaultSpec()
        (spec.dropRate, spec.duplicateRate, spec.reorderRate, spec.corruptRate) = (0.01, 0.01, 0.01, 0.01)
        try await withPortSession(Self.configuration(faults: FaultConfiguration(seed: 7, global: spec))) { emulator, id, session, echo in
            // Every lost or corrupted frame holds in-order delivery back for a retransmission timeout
            // (only the oldest unacknowledged message is ever resent), so this stays small.
            async let first = session.stream(bytes: 512 << 10, seed: 1, within: .seconds(180))
            async let second = session.stream(bytes: 512 << 10, seed: 2, within: .seconds(180))
            for result in try await [first, second] {
                #expect(!result.connectError)
                #expect(result.receivedBytes == 512 << 10)
                #expect(result.receivedSHA256 == result.sentSHA256)
            }
            let counts = try #require(emulator.server.mgs.relay(id)).faultCounts
            #expect(counts.dropped > 0 && counts.duplicated > 0 && counts.reordered > 0 && counts.corrupted > 0, "\(counts)")
        }
    }

    @Test("a delay fault set on one session through the admin endpoint holds its frames back, in order")
    func delayedFrames() async throws {
        try await withPortSession(Self.configuration()) { emulator, id, session, echo in
            let set = try await admin(emulator, .PUT, "/admin/faults/sessions/\(id)", #"{"delayMs": 150, "jitterMs": 20}"#)
            #expect(set.status == 200)
            #expect(set.json?["sessions"]?[id]?["delayMs"] == .number("150"))
            // One echo: client -> MGS -> agent -> echo -> agent -> MGS -> client crosses the relay twice.
            let start = ContinuousClock.now
            let small = try await session.stream(bytes: 1000, seed: 3, within: .seconds(30))
            #expect(ContinuousClock.now - start >= .milliseconds(300))
            #expect(small.receivedSHA256 == small.sentSHA256)
            let (status, _) = try await admin(emulator, .PUT, "/admin/faults/sessions/\(id)", #"{"delayMs": 2, "jitterMs": 3}"#)
            #expect(status == 200)
            let bulk = try await session.stream(bytes: 1 << 20, seed: 4, within: .seconds(60))
            #expect(bulk.receivedSHA256 == bulk.sentSHA256)
            #expect(try await admin(emulator, .DELETE, "/admin/faults").json?["sessions"] == .object([]))
        }
    }

    // MARK: WebSocket drops

    @Test("the client's WebSocket dropped after every 1500 frames: the client resumes each time and the bytes arrive intact")
    func clientDropEveryFrames() async throws {
        try await withPortSession(Self.configuration()) { emulator, id, session, echo in
            let set = try await admin(
                emulator, .PUT, "/admin/faults/sessions/\(id)", #"{"dropWebSocket": {"side": "client", "everyFrames": 1500}}"#)
            #expect(set.status == 200)
            let resumer = session.keepResuming(sessionID: id, emulator: emulator)
            // The bound only catches a hang: with every suite running at once on 2 cores this takes minutes.
            let result = try await reportingStalls(emulator, sessionID: id, client: session) {
                try await session.stream(bytes: 4 << 20, seed: 5, within: .seconds(300))
            }
            try await session.stopResuming()
            let drops = try await resumer.value
            #expect(result.receivedBytes == 4 << 20)
            #expect(result.receivedSHA256 == result.sentSHA256)
            #expect(drops >= 2, "\(drops) drops")
            #expect(try #require(emulator.server.mgs.relay(id)).attachCounts.client == drops + 1)
        }
    }

    @Test("the agent's WebSocket dropped mid-transfer (admin endpoint): the agent reconnects with a new token and 16 MiB arrive intact")
    func agentDropMidTransfer() async throws {
        try await withPortSession(Self.configuration()) { emulator, id, session, echo in
            let relay = try #require(emulator.server.mgs.relay(id))
            async let transfer = session.stream(bytes: 16 << 20, seed: 6, within: .seconds(300))
            #expect(try await eventually(within: .seconds(30)) { relay.dataFrameCount > 2000 })
            let dropped = try await admin(emulator, .POST, "/admin/sessions/\(id)/drop", #"{"side": "agent"}"#)
            #expect(dropped.status == 200)
            let result = try await transfer
            #expect(result.receivedBytes == 16 << 20)
            #expect(result.receivedSHA256 == result.sentSHA256)
            #expect(relay.attachCounts.agent == 2)
            #expect(relay.attachCounts.client == 1)
            #expect(emulator.server.registry.session(id)?.status == .connected)
        }
    }

    @Test("the agent's WebSocket dropped every second (from the YAML faults): transfers keep arriving intact across the drops")
    func agentDropEverySeconds() async throws {
        let configuration = try LocalSSMConfiguration.parse(yaml: """
            listen: 127.0.0.1:0
            limits: unlimited
            faults:
              seed: 3
              global:
                dropWebSocket: {side: agent, everySeconds: 1}
            """)
        try await withPortSession(configuration) { emulator, id, session, echo in
            let relay = try #require(emulator.server.mgs.relay(id))
            let crossed = try await session.transfers(seed: 100) { relay.attachCounts.agent }
            #expect(relay.attachCounts.agent >= 3)
            #expect(crossed >= 1, "no transfer was under way during a drop")
        }
    }

    // MARK: Refused port

    @Test("a refused port: a mux stream gets ConnectToPortError; a stdio (basic) session fails as the agent's does")
    func refusedPort() async throws {
        try await withPortSession(Self.configuration()) { emulator, id, session, echo in
            let set = try await admin(emulator, .PUT, "/admin/faults/sessions/\(id)", "{\"refusePorts\": [\(echo.port)]}")
            #expect(set.status == 200)
            let refused = try await session.stream(bytes: 1000, seed: 8, within: .seconds(30))
            #expect(refused.connectError)
            #expect(refused.receivedBytes == 0)
            #expect(try await admin(emulator, .DELETE, "/admin/faults/sessions/\(id)").status == 200)
            let open = try await session.stream(bytes: 1000, seed: 9, within: .seconds(30))
            #expect(!open.connectError)
            #expect(open.receivedSHA256 == open.sentSHA256)

            // Globally refused, and a stdio session, which dials when it starts.
            #expect(try await admin(emulator, .PUT, "/admin/faults/global", "{\"refusePorts\": [\(echo.port)]}").status == 200)
            let started = try await SessionTests.startSession(
                emulator, document: "AWS-StartSSHSession", parameters: ["portNumber": "\(echo.port)"])
            let stdio = try await TestSession.connect(streamURL: started.url, token: started.token)
            let output = try await value(of: stdio.closed, within: .seconds(30), "the failed session's channel_closed")
            let client = try await stdio.stateSummary()
            // Seen a few times under the full suite as "socket closed" (no channel_closed), cause not found yet:
            // the client's state (with its codec's error or the service's close frame) and the relay's log say more.
            #expect(
                output.contains("Unable to connect to specified port"),
                "\(output); session \(String(describing: emulator.server.registry.session(started.sessionID)?.status)), relay \(emulator.server.mgs.relayStateSummary(sessionID: started.sessionID) ?? "gone"); client: \(client)")
            #expect(emulator.server.registry.session(started.sessionID)?.status == .terminated)
        }
    }

    @Test("a client that opens its data channel after its session ended gets channel_closed, not a bare close")
    func clientAfterTheEndIsToldWhy() async throws {
        try await withEmulator(Self.configuration()) { emulator in
            let echo = try await EchoServer()
            defer { Task { await echo.close() } }
            let started = try await SessionTests.startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)"])
            _ = try await aws(
                ["ssm", "terminate-session", "--session-id", started.sessionID], endpoint: emulator.server.endpointURL,
                environment: ["PATH": try SessionTests.pluginStubDirectory()])
            #expect(emulator.server.registry.session(started.sessionID)?.status == .terminated)
            // The client raced the end (as a stdio session's client can when the agent fails at once).
            let late = try await TestSession.connect(streamURL: started.url, token: started.token)
            let output = try await value(of: late.closed, within: .seconds(30), "channel_closed for the late client")
            #expect(output != "socket closed", "the service closed the socket without channel_closed")
            // Any other token is still refused outright.
            let stranger = try await TestSession.connect(streamURL: started.url, token: "not-a-token")
            #expect(try await value(of: stranger.closed, within: .seconds(30), "the refused socket") == "socket closed")
        }
    }

    // MARK: Agent kill

    @Test("a killed agent: ConnectionLost, its session ends, and after the restart the instance is Online and serves again")
    func agentKill() async throws {
        try await withPortSession(Self.configuration()) { emulator, id, session, echo in
            #expect(try pingStatus(emulator) == "Online")
            let killed = try await admin(
                emulator, .POST, "/admin/agents/\(LocalSSMConfiguration.defaultInstanceID)/kill", #"{"restartAfterMs": 4000}"#)
            #expect(killed.status == 200)
            // Seen before the restart (4 s): 1.5 s of a 2 s restart was once too short with every suite running.
            #expect(try await eventually(within: .seconds(3.5)) { try pingStatus(emulator) == "ConnectionLost" })
            #expect(try await eventually(within: .seconds(15)) { try pingStatus(emulator) == "Online" })
            let output = try await value(of: session.closed, within: .seconds(15), "channel_closed after the restart")
            #expect(output == MGS.agentRestartedOutput)
            #expect(emulator.server.registry.session(id)?.status == .terminated)

            let (_, again) = try await startPortSession(emulator, echo: echo)
            let result = try await again.stream(bytes: 64 << 10, seed: 10, within: .seconds(30))
            #expect(result.receivedSHA256 == result.sentSHA256)
            #expect(try await admin(emulator, .POST, "/admin/agents/i-00000000000000000/kill").status == 400)
        }
    }

    // MARK: The service's timers

    @Test("idle timeout: after 2 s without data the session ends on both sides and shows Terminated")
    func idleTimeout() async throws {
        try await withPortSession(Self.configuration { $0.idleTimeoutSeconds = 2 }) { emulator, id, session, echo in
            let result = try await session.stream(bytes: 64 << 10, seed: 11, within: .seconds(30))
            #expect(result.receivedSHA256 == result.sentSHA256)
            let agent = try #require(emulator.agent(for: LocalSSMConfiguration.defaultInstanceID))
            #expect(agent.sessionIDs == [id])
            let start = ContinuousClock.now
            let output = try await value(of: session.closed, within: .seconds(20), "the idle timeout")
            #expect(ContinuousClock.now - start >= .seconds(1))
            #expect(output == MGS.idleTimeoutOutput)
            #expect(emulator.server.registry.session(id)?.status == .terminated)
            #expect(try await eventually(within: .seconds(5)) { agent.sessionIDs.isEmpty }, "the agent was not told")
        }
    }

    @Test("WebSocket lifetime: the service closes both sides' WebSockets every second; a resuming client keeps its transfers intact")
    func webSocketLifetime() async throws {
        try await withPortSession(Self.configuration { $0.webSocketLifetimeSeconds = 1 }) { emulator, id, session, echo in
            let relay = try #require(emulator.server.mgs.relay(id))
            let resumer = session.keepResuming(sessionID: id, emulator: emulator)
            let crossed = try await session.transfers(seed: 200) { relay.attachCounts.client }
            try await session.stopResuming()
            let drops = try await resumer.value
            #expect(drops >= 2)
            #expect(crossed >= 1, "no transfer was under way during a lifetime close")
            #expect(relay.attachCounts.agent >= 2, "the agent's WebSocket has a lifetime too")
            #expect(emulator.server.registry.session(id)?.status != .terminated)
        }
    }

    @Test("start delays: the agent's worker start and the WebSocket open delay the session's start")
    func startDelays() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        let configuration = Self.configuration {
            $0.agentStartDelayMilliseconds = 400
            $0.webSocketOpenDelayMilliseconds = 100
        }
        try await withEmulator(configuration) { emulator in
            let start = ContinuousClock.now
            let (_, session) = try await startPortSession(emulator, echo: echo)
            // The agent waits 400 ms, then its WebSocket waits 100 ms; the client's own open waits 100 ms in parallel.
            #expect(ContinuousClock.now - start >= .milliseconds(500))
            let result = try await session.stream(bytes: 1000, seed: 12, within: .seconds(30))
            #expect(result.receivedSHA256 == result.sentSHA256)
        }
    }

    // MARK: Malformed input

    @Test("malformed frames and requests are refused or ignored as AWS would, and the emulator keeps serving")
    func malformedInput() async throws {
        try await withPortSession(Self.configuration()) { emulator, id, session, echo in
            let uri = "/v1/data-channel/\(id)?role=publish_subscribe"
            func raw() async throws -> any Channel {
                try await LoopbackClient.connectWebSocket(
                    group: MultiThreadedEventLoopGroup.singleton, host: "127.0.0.1", port: emulator.server.port, uri: uri, headers: []
                ) { _ in }
            }
            func closes(_ channel: any Channel) async -> Bool {
                (try? await value(of: channel.closeFuture, within: .seconds(5), "the close")) != nil
            }
            var garbage = ByteBuffer()
            for index in 0..<300 { garbage.writeInteger(UInt8(truncatingIfNeeded: index &* 37)) }
            let valid = try AgentMessage(
                messageType: .inputStreamData, createdDate: 1, sequenceNumber: 0, flags: [], messageID: .random(),
                payloadType: .output, payload: ByteBuffer(string: "x")).encoded()
            let truncated = valid.getSlice(at: valid.readerIndex, length: 60)!

            // Before OpenDataChannel: anything else closes the socket.
            let first = try await raw()
            try await first.writeAndFlush(WebSocketMessage.binary(garbage))
            #expect(await closes(first), "a binary frame instead of OpenDataChannelInput")
            let second = try await raw()
            try await second.writeAndFlush(WebSocketMessage.text(ByteBuffer(string: #"{"hello":"there"}"#)))
            #expect(await closes(second), "a text frame that is not OpenDataChannelInput")
            let third = try await raw()
            let wrongToken = OpenDataChannelInput(
                requestID: UUID().uuidString.lowercased(), tokenValue: "not-a-token",
                role: .client(clientID: UUID().uuidString.lowercased(), clientVersion: "1.2.650.0"))
            try await third.writeAndFlush(WebSocketMessage.text(wrongToken.encoded()))
            #expect(await closes(third), "a wrong token")
            let fourth = try await raw()
            let huge = ByteBuffer(repeating: 0x41, count: (1 << 20) + 1)
            fourth.writeAndFlush(WebSocketMessage.binary(huge), promise: nil)
            #expect(await closes(fourth), "a frame over 1 MiB")

            // On the open session: garbage, a truncated AgentMessage and a stray text frame are ignored.
            for frame in [
                WebSocketMessage.binary(garbage), WebSocketMessage.binary(truncated),
                WebSocketMessage.text(ByteBuffer(string: "not an AgentMessage")),
            ] {
                try await session.channel.writeAndFlush(frame)
            }
            let result = try await session.stream(bytes: 256 << 10, seed: 13, within: .seconds(30))
            #expect(result.receivedSHA256 == result.sentSHA256)
            #expect(session.channel.isActive)

            // Where there is an HTTP answer, it is AWS-shaped.
            let notFound = try await admin(emulator, .GET, "/v1/nothing-here")
            #expect(notFound.status == 404)
            #expect(notFound.json?["__type"]?.stringValue == "UnknownOperationException")
            let (tokenStatus, tokenBody) = try await LoopbackClient.post(
                group: MultiThreadedEventLoopGroup.singleton, host: "127.0.0.1", port: emulator.server.port,
                path: "/v1/data-channel/nobody-00000000000000000", headers: [], body: ByteBuffer(string: "{}"))
            #expect(tokenStatus == 400)
            #expect(tokenBody.contains("Session is already terminated"))
            let badFault = try await admin(emulator, .PUT, "/admin/faults/global", #"{"drop": 2}"#)
            #expect(badFault.status == 400)
            #expect(badFault.json?["message"]?.stringValue?.contains("'global.drop'") == true)

            // And a new session still works from start to end.
            let (_, fresh) = try await startPortSession(emulator, echo: echo)
            let again = try await fresh.stream(bytes: 256 << 10, seed: 14, within: .seconds(30))
            #expect(again.receivedSHA256 == again.sentSHA256)
        }
    }
}

@Suite("Fault rules and their configuration")
struct FaultRuleTests {
    static func frame(_ sequence: Int64) -> ByteBuffer {
        try! AgentMessage(
            messageType: .inputStreamData, createdDate: 1, sequenceNumber: sequence, flags: [], messageID: .random(),
            payloadType: .output, payload: ByteBuffer(string: "payload \(sequence)")).encoded()
    }

    @Test("each frame fault at rate 1: drop, duplicate, swap with the next, corrupt (the digest then fails)")
    func rules() throws {
        var all = FaultSpec()
        all.dropRate = 1
        var faults = FrameFaults(seed: 1)
        #expect(faults.apply(Self.frame(0), spec: all).frames.isEmpty)

        var duplicate = FaultSpec()
        duplicate.duplicateRate = 1
        let twice = faults.apply(Self.frame(1), spec: duplicate).frames
        #expect(twice.count == 2 && twice[0] == twice[1])

        var reorder = FaultSpec()
        reorder.reorderRate = 1
        let a = Self.frame(2), b = Self.frame(3)
        let held = faults.apply(a, spec: reorder)
        #expect(held.frames.isEmpty && held.heldForReorder != nil)
        #expect(faults.apply(b, spec: FaultSpec()).frames == [b, a])
        let lone = faults.apply(a, spec: reorder)
        #expect(faults.releaseHeld(id: try #require(lone.heldForReorder)) == a)

        var corrupt = FaultSpec()
        corrupt.corruptRate = 1
        let damaged = try #require(faults.apply(a, spec: corrupt).frames.first)
        #expect(damaged != a && damaged.readableBytes == a.readableBytes)
        #expect(throws: AgentMessageError.self) { try AgentMessage.decode(damaged) }
        #expect((try? AgentMessage.decode(damaged, options: .init(verifiesDigest: false))) != nil, "only the payload is touched")
        #expect(faults.dropped == 1 && faults.duplicated >= 1 && faults.reordered == 1 && faults.corrupted == 1)
    }

    @Test("the same seed makes the same decisions")
    func repeatable() {
        var spec = FaultSpec()
        (spec.dropRate, spec.duplicateRate, spec.reorderRate, spec.corruptRate) = (0.1, 0.1, 0.1, 0.1)
        func run() -> [Int] {
            var faults = FrameFaults(seed: 42)
            return (0..<500).map { faults.apply(Self.frame(Int64($0)), spec: spec).frames.count }
        }
        #expect(run() == run())
        #expect(Set(run()).count > 1)
    }

    @Test("delays keep frames in order")
    func delaysKeepOrder() {
        var spec = FaultSpec()
        (spec.delayMilliseconds, spec.jitterMilliseconds) = (5, 50)
        var faults = FrameFaults(seed: 9)
        var last: UInt64 = 0
        for step in 0..<200 {
            let release = faults.releaseTimes(count: 1, spec: spec, now: UInt64(step) * 1_000_000)[0]
            #expect(release > last)
            #expect(release >= UInt64(step) * 1_000_000 + 5_000_000)
            last = release
        }
    }

    @Test("faults and limit figures in the configuration file; mistakes name the key and the line")
    func configuration() throws {
        let configuration = try LocalSSMConfiguration.parse(yaml: """
            limits:
              profile: aws
              idleTimeoutSeconds: 5
              webSocketLifetimeSeconds: never
              agentStartDelayMs: 0
            faults:
              seed: 99
              global: {delayMs: 10, jitterMs: 5, drop: 0.01, direction: toClient, refusePorts: [22, 5432]}
              sessions:
                alice-0123456789abcdef0:
                  dropWebSocket: {side: client, everyFrames: 100}
            """)
        #expect(configuration.limits.idleTimeoutSeconds == 5)
        #expect(configuration.limits.webSocketLifetimeSeconds == nil)
        #expect(configuration.limits.agentStartDelayMilliseconds == 0)
        #expect(configuration.limits.startSessionDelayMilliseconds == 300)
        #expect(configuration.limits.messagesPerSecond == 1000)
        #expect(LimitsProfile.unlimited.applying(configuration.limitsOverrides).idleTimeoutSeconds == 5)
        #expect(configuration.faults.seed == 99)
        let global = try #require(configuration.faults.global)
        #expect(global.delayMilliseconds == 10 && global.jitterMilliseconds == 5 && global.dropRate == 0.01)
        #expect(global.direction == .toClient && global.refusedPorts == [22, 5432])
        #expect(configuration.faults.sessions["alice-0123456789abcdef0"]?.webSocketDrop == .init(side: .client, trigger: .everyFrames(100)))

        for (yaml, expected) in [
            ("faults:\n  global: {drop: 2}\n", "<config>:2: 'faults.global.drop': is '2'; expected a fraction from 0 to 1"),
            ("faults:\n  global:\n    dropWebSocket: {side: both, everyFrames: 3}\n", "<config>:3: 'faults.global.dropWebSocket.side': is 'both'"),
            ("faults:\n  global:\n    dropWebSocket: {side: agent}\n", "'faults.global.dropWebSocket': needs exactly one of everyFrames or everySeconds"),
            ("faults:\n  glob: {}\n", "<config>:2: 'faults.glob': unknown key"),
            ("limits: {profile: fast}\n", "'limits.profile': is 'fast'; expected aws or unlimited"),
            ("limits: {idleTimeoutSeconds: 0}\n", "'limits.idleTimeoutSeconds': is '0'; expected a whole number from 1 to 86400"),
        ] {
            #expect {
                try LocalSSMConfiguration.parse(yaml: yaml)
            } throws: { error in
                "\(error)".contains(expected)
            }
        }
    }
}
