import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import SSMProtocol
import TestSupport
import Testing

@testable import LocalSSM

struct TimedOut: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(self.what)" }
}

/// The future's value, or `TimedOut` after `limit`: a test waits boundedly even when a future is never completed.
func value<T: Sendable>(of future: EventLoopFuture<T>, within limit: TimeAmount, _ what: String) async throws -> T {
    let promise = future.eventLoop.makePromise(of: T.self)
    future.cascade(to: promise)
    let timer = future.eventLoop.scheduleTask(in: limit) { promise.fail(TimedOut(what: what)) }
    defer { timer.cancel() }
    return try await promise.futureResult.get()
}

/// Polls `condition` every 20 ms until it holds or `limit` passes; returns whether it held.
func eventually(within limit: Duration, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))  // polling a condition, bounded
    }
    return try await condition()
}

/// Runs `body`; if it times out, the error says where the client, the service's relay and the
/// agent stood (a hang is otherwise only "timed out").
func reportingStalls<T>(
    _ emulator: LocalEmulator, sessionID: String, client: TestSession, _ body: () async throws -> T
) async throws -> T {
    do {
        return try await body()
    } catch let timeout as TimedOut {
        let clientState = (try? await client.stateSummary()) ?? "unavailable"
        let relay = emulator.server.mgs.relayStateSummary(sessionID: sessionID) ?? "no relay"
        let agent = await emulator.agent(for: LocalSSMConfiguration.defaultInstanceID)?.stateSummary(sessionID: sessionID) ?? "no such session"
        throw TimedOut(what: "\(timeout.what) — client: \(clientState); relay: \(relay); agent: \(agent)")
    }
}

extension TestSession {
    /// One echoed stream, bounded in time.
    func stream(bytes: Int, seed: UInt64, within limit: TimeAmount) async throws -> TestSessionClient.StreamResult {
        let promise = self.channel.eventLoop.makePromise(of: TestSessionClient.StreamResult.self)
        let handler = self.handler
        self.channel.eventLoop.execute { handler.value.openStream(bytes: bytes, seed: seed, promise: promise) }
        return try await value(of: promise.futureResult, within: limit, "a stream of \(bytes) bytes")
    }

    /// Echoes 2 MiB streams one after another, each checked, until `attaches()` (a side's WebSocket
    /// count) reaches 3 or 40 streams went; returns how many streams were under way while it grew.
    func transfers(seed: UInt64, attaches: () -> Int) async throws -> Int {
        var crossed = 0
        // Until a drop happened during a transfer and a few drops in all (a slow start may see drops before any transfer).
        for round in 0..<40 where attaches() < 3 || crossed == 0 {
            let before = attaches()
            let result = try await self.stream(bytes: 2 << 20, seed: seed + UInt64(round), within: .seconds(60))
            #expect(result.receivedSHA256 == result.sentSHA256)
            #expect(result.receivedBytes == 2 << 20)
            if attaches() > before { crossed += 1 }
        }
        return crossed
    }

    /// Stops waiting for drops: `keepResuming` returns.
    func stopResuming() async throws {
        let handler = self.handler
        try await self.channel.eventLoop.submit {
            handler.value.survivesDrops = false
            handler.value.drops?.fail(CancellationError())
            handler.value.drops = nil
        }.get()
    }

    /// What the official client does after a drop, over and over: ResumeSession, then a new WebSocket
    /// to the same StreamUrl with the new token (the client state carries over). Returns the drops seen.
    func keepResuming(sessionID: String, emulator: LocalEmulator) -> Task<Int, any Error> {
        Task {
            var drops = 0
            while true {
                let dropped = try await self.expectDrop()
                do {
                    try await dropped.get()
                } catch is CancellationError {
                    return drops
                }
                drops += 1
                var attempts = 0
                while true {
                    let resumed = try emulator.server.api.resumeSession(.object([("SessionId", .string(sessionID))]))
                    guard let token = resumed["TokenValue"]?.stringValue, let url = resumed["StreamUrl"]?.stringValue else { return drops }
                    do {
                        _ = try await self.reconnect(streamURL: url, token: token)
                        break
                    } catch {
                        attempts += 1
                        if attempts > 5 { throw error }
                    }
                }
            }
        }
    }
}

/// A call to the emulator's admin endpoint.
func admin(_ emulator: LocalEmulator, _ method: HTTPMethod, _ path: String, _ body: String = "") async throws -> (status: Int, json: JSONValue?) {
    let (status, text) = try await LoopbackClient.post(
        group: MultiThreadedEventLoopGroup.singleton, host: "127.0.0.1", port: emulator.server.port, path: path,
        headers: [("Content-Type", "application/json")], body: ByteBuffer(string: body), method: method)
    return (status, try? JSONValue(parsing: ByteBuffer(string: text)))
}

/// An instance's PingStatus, read the way clients do (DescribeInstanceInformation).
func pingStatus(_ emulator: LocalEmulator, _ instanceID: String = LocalSSMConfiguration.defaultInstanceID) throws -> String? {
    let answer = try emulator.server.api.describeInstanceInformation(.object([]))
    guard case .array(let list)? = answer["InstanceInformationList"] else { return nil }
    return list.first { $0["InstanceId"]?.stringValue == instanceID }?["PingStatus"]?.stringValue
}

/// A port-forwarding session to `echo`, connected and past the handshake.
func startPortSession(_ emulator: LocalEmulator, echo: EchoServer) async throws -> (id: String, session: TestSession) {
    let started = try await SessionTests.startSession(
        emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
    let session = try await TestSession.connect(streamURL: started.url, token: started.token)
    try await value(of: session.ready, within: .seconds(20), "the handshake")
    return (started.sessionID, session)
}

/// An emulator, an echo server and a port-forwarding session to it, for the length of `body`.
func withPortSession(
    _ configuration: LocalSSMConfiguration,
    _ body: (_ emulator: LocalEmulator, _ sessionID: String, _ session: TestSession, _ echo: EchoServer) async throws -> Void
) async throws {
    let echo = try await EchoServer()
    do {
        try await withEmulator(configuration) { emulator in
            let (id, session) = try await startPortSession(emulator, echo: echo)
            try await body(emulator, id, session, echo)
        }
    } catch {
        await echo.close()
        throw error
    }
    await echo.close()
}
