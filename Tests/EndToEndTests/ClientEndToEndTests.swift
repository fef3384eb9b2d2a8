import Foundation
import LocalSSM
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The client commands against the emulator with real tools: OpenSSH (ssh, scp, sshd), rsync,
/// the awscli, and a terminal driven through a pty.
@Suite("ssmgate with real OpenSSH, rsync, awscli and a terminal", .serialized)
struct ClientEndToEndTests {
    static let instance = LocalSSMConfiguration.defaultInstanceID
    static let bigFile = 64 << 20

    static func environment(_ emulator: LocalEmulator) -> [String: String] {
        emulatorEnvironment(endpoint: emulator.server.endpointURL)
    }

    @Test("ssh with `ssmgate proxy` as ProxyCommand runs a command on a real sshd")
    func sshProxyCommand() async throws {
        let sshd = try await SSHServer.start()
        defer { sshd.stop() }
        let ssmgate = try ssmgateExecutable()
        try await withEmulator { emulator in
            let ssh = try #require(findExecutable("ssh"))
            // The Name tag works as the host too.
            for host in [Self.instance, "local"] {
                let result = try await run(
                    ssh, sshd.clientOptions(proxy: "\(ssmgate) proxy %h %p") + ["-p", "\(sshd.port)", "\(sshd.user)@\(host)", "echo hello-$((6*7))"],
                    environment: Self.environment(emulator))
                #expect(result.status == 0, "ssh failed: \(result.stderr)")
                #expect(result.stdout == "hello-42\n")
            }
            // A target that does not exist: a clear message, a non-zero exit.
            let result = try await run(
                ssh, sshd.clientOptions(proxy: "\(ssmgate) proxy %h %p") + ["-p", "\(sshd.port)", "\(sshd.user)@no-such-name", "true"],
                environment: Self.environment(emulator))
            #expect(result.status != 0)
            #expect(result.stderr.contains("No running instance has the Name tag 'no-such-name'"))
        }
    }

    @Test("scp and rsync of 64 MiB both ways through `ssmgate proxy`: checksums equal")
    func scpAndRsyncBothWays() async throws {
        let sshd = try await SSHServer.start()
        defer { sshd.stop() }
        let scratch = try ScratchDirectory("copy")
        defer { scratch.remove() }
        let ssmgate = try ssmgateExecutable()
        let original = try writeRandomFile(scratch.file("original.bin"), bytes: Self.bigFile, seed: 64)
        try await withEmulator { emulator in
            let environment = Self.environment(emulator)
            let options = sshd.clientOptions(proxy: "\(ssmgate) proxy %h %p")
            let remote = "\(sshd.user)@\(Self.instance)"
            let scp = try #require(findExecutable("scp"))
            var result = try await run(scp, ["-q"] + options + ["-P", "\(sshd.port)", scratch.file("original.bin"), "\(remote):\(scratch.file("scp-up.bin"))"], environment: environment)
            #expect(result.status == 0, "scp upload: \(result.stderr)")
            #expect(try sha256(ofFile: scratch.file("scp-up.bin")) == original)
            result = try await run(scp, ["-q"] + options + ["-P", "\(sshd.port)", "\(remote):\(scratch.file("scp-up.bin"))", scratch.file("scp-down.bin")], environment: environment)
            #expect(result.status == 0, "scp download: \(result.stderr)")
            #expect(try sha256(ofFile: scratch.file("scp-down.bin")) == original)

            let rsync = try #require(findExecutable("rsync"), "rsync is not installed: run scripts/test.sh")
            let shell = (["ssh"] + options.map { $0.contains(" ") ? "'\($0)'" : $0 } + ["-p", "\(sshd.port)"]).joined(separator: " ")
            result = try await run(rsync, ["-a", "-e", shell, scratch.file("original.bin"), "\(remote):\(scratch.file("rsync-up.bin"))"], environment: environment)
            #expect(result.status == 0, "rsync upload: \(result.stderr)")
            #expect(try sha256(ofFile: scratch.file("rsync-up.bin")) == original)
            result = try await run(rsync, ["-a", "-e", shell, "\(remote):\(scratch.file("rsync-up.bin"))", scratch.file("rsync-down.bin")], environment: environment)
            #expect(result.status == 0, "rsync download: \(result.stderr)")
            #expect(try sha256(ofFile: scratch.file("rsync-down.bin")) == original)
        }
    }

    @Test("A WebSocket drop in the middle of a 64 MiB scp: the session resumes and the file arrives intact")
    func scpSurvivesWebSocketDrop() async throws {
        let sshd = try await SSHServer.start()
        defer { sshd.stop() }
        let scratch = try ScratchDirectory("drop")
        defer { scratch.remove() }
        let ssmgate = try ssmgateExecutable()
        let original = try writeRandomFile(scratch.file("original.bin"), bytes: Self.bigFile, seed: 65)
        try await withEmulator { emulator in
            let scp = try #require(findExecutable("scp"))
            let destination = scratch.file("up.bin")
            let copy = Task {
                try await run(
                    scp, ["-q"] + sshd.clientOptions(proxy: "\(ssmgate) proxy %h %p")
                        + ["-P", "\(sshd.port)", scratch.file("original.bin"), "\(sshd.user)@\(Self.instance):\(destination)"],
                    environment: Self.environment(emulator))
            }
            // Drop the client's WebSocket once a quarter of the file has arrived.
            var dropped = false
            let deadline = Date().addingTimeInterval(300)
            while !dropped, Date() < deadline {
                if fileSize(destination) > Self.bigFile / 4,
                    let session = emulator.server.registry.sessions.max(by: { $0.startDate < $1.startDate })
                {
                    dropped = emulator.server.mgs.dropWebSocket(sessionID: session.id, client: true)
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(dropped, "the transfer never reached a quarter of the file")
            // The client resumes while the copy goes on (the session is terminated once scp ends).
            var reconnected = false
            let session = try #require(emulator.server.registry.sessions.max(by: { $0.startDate < $1.startDate }))
            while dropped, !reconnected, Date() < deadline {
                reconnected = ((try? emulator.server.mgs.attachCount(sessionID: session.id).client) ?? 0) >= 2
                if !reconnected { try await Task.sleep(for: .milliseconds(20)) }
            }
            let result = try await copy.value
            #expect(result.status == 0, "scp: \(result.stderr)")
            #expect(try sha256(ofFile: destination) == original)
            #expect(reconnected, "the client did not reconnect")
        }
    }

    @Test("awscli start-session with ssmgate as session-manager-plugin: concurrent connections through the local port")
    func awscliPluginPortForwarding() async throws {
        let echo = try await EchoServer()
        defer { Task { await echo.close() } }
        let scratch = try ScratchDirectory("plugin")
        defer { scratch.remove() }
        let ssmgate = try ssmgateExecutable()
        let awsPath = try #require(findExecutable("aws"), "awscli is not installed: run scripts/test.sh")
        try FileManager.default.createSymbolicLink(atPath: scratch.file("session-manager-plugin"), withDestinationPath: ssmgate)
        let version = try await run(scratch.file("session-manager-plugin"), ["--version"], environment: [:])
        #expect(version.status == 0)
        #expect(version.stdout == "1.2.707.0\n")
        try await withEmulator { emulator in
            var environment = Self.environment(emulator)
            let python = URL(fileURLWithPath: try #require(findExecutable("python3"))).deletingLastPathComponent().path
            let awsDirectory = URL(fileURLWithPath: awsPath).deletingLastPathComponent().path
            environment["PATH"] = "\(scratch.path):\(awsDirectory):\(python):/usr/bin:/bin"
            let localPort = try await freePort()
            let session = try BackgroundProcess(
                awsPath,
                ["ssm", "start-session", "--endpoint-url", emulator.server.endpointURL, "--target", Self.instance,
                 "--document-name", "AWS-StartPortForwardingSession",
                 "--parameters", "{\"portNumber\":[\"\(echo.port)\"],\"localPortNumber\":[\"\(localPort)\"]}"],
                environment: environment)
            defer { session.cleanUp() }
            let waiting = await session.waitForOutput(containing: "Waiting for connections...", within: 60)
            #expect(waiting, "no 'Waiting for connections' from the plugin: \(session.text)")
            if waiting {
                #expect(session.text.contains("Starting session with SessionId: "))
                #expect(session.text.contains("Port \(localPort) opened for sessionId "))
                try await withThrowingTaskGroup(of: EchoResult.self) { group in
                    for index in 0..<4 {
                        group.addTask { try await echoThrough(port: localPort, bytes: (1 << 20) * (index + 1), seed: UInt64(100 + index)) }
                    }
                    for try await result in group {
                        #expect(result.received == result.sent)
                        #expect(result.receivedSHA256 == result.sentSHA256)
                    }
                }
            }
            // Ctrl-C as a terminal would send it: awscli ignores it, the plugin ends the session.
            session.signalGroup(SIGINT)
            let status = await session.waitForExit(within: 30)
            #expect(status == 0, "output: \(session.text)")
            #expect(session.text.contains("Exiting session with sessionId: "))
            // The session token must not leak into what the user sees.
            #expect(!emulator.server.registry.sessions.isEmpty)
        }
    }

    @Test("install-plugin links session-manager-plugin to ssmgate, refuses to overwrite without --force")
    func installPlugin() async throws {
        let ssmgate = try ssmgateExecutable()
        let scratch = try ScratchDirectory("install")
        defer { scratch.remove() }
        var result = try await run(ssmgate, ["install-plugin", scratch.path], environment: ProcessInfo.processInfo.environment)
        #expect(result.status == 0, "\(result.stderr)")
        let link = scratch.file("session-manager-plugin")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == URL(fileURLWithPath: ssmgate).resolvingSymlinksInPath().path)
        result = try await run(link, ["--version"], environment: [:])
        #expect(result.stdout == "1.2.707.0\n")
        result = try await run(link, [], environment: [:])
        #expect(result.stdout.contains("The Session Manager plugin was installed successfully"))
        result = try await run(ssmgate, ["install-plugin", scratch.path], environment: ProcessInfo.processInfo.environment)
        #expect(result.status != 0)
        #expect(result.stderr.contains("--force"))
        result = try await run(ssmgate, ["install-plugin", "--force", scratch.path], environment: ProcessInfo.processInfo.environment)
        #expect(result.status == 0)
    }

    @Test("A shell on a terminal: runs a command, follows a resize, exits with the command's status")
    func shellOnPseudoTerminal() async throws {
        let ssmgate = try ssmgateExecutable()
        let python = try #require(findExecutable("python3"))
        try await withEmulator { emulator in
            // A pty driven from Python: type, resize the window, type again, read the exit status.
            let driver = """
                import os, pty, sys, time, fcntl, termios, struct, json
                pid, fd = pty.fork()
                if pid == 0:
                    os.execv(sys.argv[1], [sys.argv[1], "shell", sys.argv[2], "--command", "sh -i"])
                out = b""
                def until(needle, limit=60):
                    global out
                    end = time.time() + limit
                    while needle not in out and time.time() < end:
                        try:
                            data = os.read(fd, 4096)
                        except OSError:
                            break
                        if not data:
                            break
                        out += data
                    return needle in out
                fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
                time.sleep(1.0)
                os.write(fd, b"echo mark-$((6*7))\\r")
                first = until(b"mark-42")
                fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 123, 0, 0))
                os.kill(pid, 28)
                time.sleep(1.5)
                os.write(fd, b"stty size\\r")
                resized = until(b"37 123")
                os.write(fd, b"exit 3\\r")
                until(b"\\xff", 20)
                _, status = os.waitpid(pid, 0)
                print(json.dumps({"first": first, "resized": resized, "status": os.waitstatus_to_exitcode(status), "output": out.decode("utf-8", "replace")}))
                """
            try driver.write(toFile: "/tmp/ssmgate-pty-driver-\(getpid()).py", atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: "/tmp/ssmgate-pty-driver-\(getpid()).py") }
            let result = try await run(python, ["/tmp/ssmgate-pty-driver-\(getpid()).py", ssmgate, Self.instance], environment: Self.environment(emulator))
            let report = try #require(result.json, "driver output: \(result.stdout) \(result.stderr)")
            #expect(report["first"] as? Bool == true, "\(report["output"] ?? "")")
            #expect(report["resized"] as? Bool == true, "\(report["output"] ?? "")")
            #expect(report["status"] as? Int == 3, "\(report["output"] ?? "")")
        }
    }
}
