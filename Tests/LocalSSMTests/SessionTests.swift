import Foundation
import NIOCore
import TestSupport
import Testing

@testable import LocalSSM

@Suite("Sessions through MGS and the simulated agent", .serialized)
struct SessionTests {
    /// StartSession through the real awscli's API call path is covered in AWSCLITests; here the
    /// session is started with a signed call made by the API type directly, then driven by the test client.
    static func startSession(_ emulator: LocalEmulator, document: String, parameters: [String: String]) async throws -> (sessionID: String, token: String, url: String) {
        let result = try await aws(
            ["ssm", "start-session", "--target", LocalSSMConfiguration.defaultInstanceID, "--document-name", document, "--parameters",
             "{" + parameters.map { "\"\($0.key)\":[\"\($0.value)\"]" }.joined(separator: ",") + "}"],
            endpoint: emulator.server.endpointURL,
            // awscli would exec session-manager-plugin; point it at `true` so only the API call happens.
            environment: ["PATH": try pluginStubDirectory()])
        // awscli prints nothing useful when the plugin is a stub; read the session back from the registry.
        _ = result
        let session = try #require(emulator.server.registry.sessions.max { $0.startDate < $1.startDate })
        let token = try #require(emulator.server.registry.renewClientToken(session.id))
        return (session.id, token, emulator.server.api.streamURL(session.id))
    }

    /// A directory holding `aws` (via its real path) and a `session-manager-plugin` that does nothing.
    static func pluginStubDirectory() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ssmgate-plugin-stub-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let plugin = directory.appendingPathComponent("session-manager-plugin")
        try "#!/bin/sh\nexit 0\n".write(to: plugin, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: plugin.path)
        let python = URL(fileURLWithPath: try #require(findExecutable("python3"))).deletingLastPathComponent().path
        return "\(directory.path):\(python):\(ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")"
    }

    @Test("64 MiB each way through one mux session, over several streams, arrive intact")
    func muxBulkTransfer() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        try await withEmulator { emulator in
            let started = try await Self.startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)", "localPortNumber": "0"])
            let session = try await TestSession.connect(streamURL: started.url, token: started.token)
            try await session.ready.get()
            let (agentVersion, properties) = try await session.handshakeProperties()
            #expect(agentVersion == LocalSSMConfiguration.currentAgentVersion)
            #expect(properties["type"]?.stringValue == "LocalPortForwarding")
            #expect(properties["portNumber"]?.stringValue == "\(echo.port)")

            let streamBytes = [32 << 20, 16 << 20, 16 << 20]
            try await withThrowingTaskGroup(of: TestSessionClient.StreamResult.self) { group in
                for (index, bytes) in streamBytes.enumerated() {
                    group.addTask { try await session.stream(bytes: bytes, seed: UInt64(index + 1)) }
                }
                var total = 0
                for try await result in group {
                    #expect(!result.connectError)
                    #expect(result.receivedSHA256 == result.sentSHA256)
                    total += result.receivedBytes
                }
                #expect(total == 64 << 20)
            }
            #expect(try await session.pausesSeen() == 0, "--limits unlimited must not throttle")
            try await session.terminate()
            let output = try await session.closed.get()
            #expect(output == "" || output == "socket closed")
        }
    }

    @Test("--limits aws: a sender over 1000 messages/s is paused, nothing is lost, and paced data arrives intact")
    func awsLimits() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        let configuration = LocalSSMConfiguration(listenPort: 0, limits: .aws)
        try await withEmulator(configuration) { emulator in
            let started = try await Self.startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)"])
            let session = try await TestSession.connect(streamURL: started.url, token: started.token)
            try await session.ready.get()
            try await session.flood(count: 2500)
            let bytes = 1 << 20
            let result = try await session.stream(bytes: bytes, seed: 42)
            #expect(result.receivedSHA256 == result.sentSHA256)
            #expect(result.receivedBytes == bytes)
            #expect(try await session.pausesSeen() > 0)
        }
    }

    @Test("a shell session on a pty: runs commands, honours the terminal size, ends when the shell exits")
    func shellSession() async throws {
        try await withEmulator { emulator in
            let started = try await Self.startSession(emulator, document: "SSM-SessionManagerRunShell", parameters: [:])
            let session = try await TestSession.connect(streamURL: started.url, token: started.token, terminal: true)
            try await session.ready.get()
            try await session.resize(columns: 132, rows: 41)
            try await session.type("stty size; echo marker-$((6*7))\r")
            #expect(try await session.waitForOutput(containing: "41 132"))
            #expect(try await session.waitForOutput(containing: "marker-42"))
            try await session.type("exit 3\r")
            let output = try await session.closed.get()
            #expect(output == "" || output == "socket closed")
            let record = try #require(emulator.server.registry.session(started.sessionID))
            #expect(record.status == .terminated)
        }
    }

    @Test("AWS-StartInteractiveCommand runs its command on a pty and the session ends with it")
    func interactiveCommand() async throws {
        try await withEmulator { emulator in
            let started = try await Self.startSession(
                emulator, document: "AWS-StartInteractiveCommand", parameters: ["command": "echo from-the-command; tty"])
            let session = try await TestSession.connect(streamURL: started.url, token: started.token, terminal: true)
            try await session.ready.get()
            #expect(try await session.waitForOutput(containing: "from-the-command"))
            #expect(try await session.waitForOutput(containing: "/dev/pts/"))
            _ = try await session.closed.get()
        }
    }

    @Test("the client's WebSocket dropped mid-transfer: ResumeSession, reconnect, and the bytes arrive intact")
    func clientDropAndResume() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        try await withEmulator { emulator in
            let started = try await Self.startSession(
                emulator, document: "AWS-StartPortForwardingSession", parameters: ["portNumber": "\(echo.port)"])
            let session = try await TestSession.connect(streamURL: started.url, token: started.token)
            try await session.ready.get()
            let dropped = try await session.expectDrop()
            async let transfer = session.stream(bytes: 8 << 20, seed: 7)
            // Let some data flow, then cut the client's socket as a network failure would.
            try await Task.sleep(for: .milliseconds(300))
            #expect(emulator.server.mgs.dropWebSocket(sessionID: started.sessionID, client: true))
            try await dropped.get()
            // What the client does next: ResumeSession (the real API, through awscli) and a new socket.
            let resumed = try await aws(["ssm", "resume-session", "--session-id", started.sessionID], endpoint: emulator.server.endpointURL)
            #expect(resumed.status == 0, "\(resumed.stderr)")
            let token = try #require(resumed.json?["TokenValue"] as? String)
            let url = try #require(resumed.json?["StreamUrl"] as? String)
            _ = try await session.reconnect(streamURL: url, token: token)
            let result = try await transfer
            #expect(result.receivedBytes == 8 << 20)
            #expect(result.receivedSHA256 == result.sentSHA256)
        }
    }
}
