import Foundation
import LocalSSM
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("ssmgate under the service's limits (--limits aws)", .serialized)
struct LimitsEndToEndTests {
    /// An interactive ssh session: writes a line, times until it comes back. Spawned with
    /// posix_spawn: ssh closes descriptors it inherits, which Foundation's Process mistakes for
    /// the child's exit (and then blocks every other Process of the run).
    final class EchoTimer: @unchecked Sendable {
        let pid: pid_t
        let input: CInt
        let output: CInt
        var buffer: [UInt8] = []

        init(_ ssh: String, _ arguments: [String], environment: [String: String]) throws {
            var toChild: [CInt] = [0, 0]
            var fromChild: [CInt] = [0, 0]
            guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw ToolMissing(tool: "pipes") }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
            posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            for descriptor in toChild + fromChild { posix_spawn_file_actions_addclose(&actions, descriptor) }
            let argv = ([ssh] + arguments).map { strdup($0) } + [nil]
            let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
            defer { for pointer in argv + envp { free(pointer) } }
            var pid: pid_t = 0
            let status = posix_spawn(&pid, ssh, &actions, nil, argv, envp)
            close(toChild[0])
            close(fromChild[1])
            guard status == 0 else { throw ToolMissing(tool: "ssh (posix_spawn failed: \(status))") }
            self.pid = pid
            self.input = toChild[1]
            self.output = fromChild[0]
        }

        /// Round trip of one line, in seconds; nil if it never came back (EOF).
        func roundTrip(_ line: String) -> Double? {
            let start = Date()
            let bytes = Array((line + "\n").utf8)
            guard bytes.withUnsafeBytes({ write(self.input, $0.baseAddress, $0.count) }) == bytes.count else { return nil }
            var chunk = [UInt8](repeating: 0, count: 4096)
            while !self.contains(bytes) {
                let count = chunk.withUnsafeMutableBytes { read(self.output, $0.baseAddress, $0.count) }
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { return nil }
                self.buffer += chunk[0..<count]
            }
            self.buffer.removeAll()
            return Date().timeIntervalSince(start)
        }

        func contains(_ needle: [UInt8]) -> Bool {
            guard self.buffer.count >= needle.count else { return false }
            for start in 0...(self.buffer.count - needle.count) where self.buffer[start] == needle[0] {
                if Array(self.buffer[start..<(start + needle.count)]) == needle { return true }
            }
            return false
        }

        func finish() {
            close(self.input)
            var status: Int32 = 0
            _ = waitpid(self.pid, &status, 0)
            close(self.output)
        }
    }

    @Test("A bulk scp stays under the message-rate limit while an ssh on the same mux session keeps echoing")
    func interactiveBesideBulkUnderAWSLimits() async throws {
        let sshd = try await SSHServer.start()
        defer { sshd.stop() }
        let scratch = try ScratchDirectory("limits")
        defer { scratch.remove() }
        let ssmgate = try ssmgateExecutable()
        let bytes = 8 << 20
        let original = try writeRandomFile(scratch.file("bulk.bin"), bytes: bytes, seed: 77)
        try await withEmulator(LocalSSMConfiguration(listenPort: 0, limits: .aws)) { emulator in
            let environment = emulatorEnvironment(endpoint: emulator.server.endpointURL)
            let localPort = try await freePort()
            let forward = try BackgroundProcess(
                ssmgate, ["forward", LocalSSMConfiguration.defaultInstanceID, "--remote-port", "\(sshd.port)", "--local-port", "\(localPort)"],
                environment: environment)
            defer { forward.cleanUp() }
            #expect(await forward.waitForOutput(containing: "Waiting for connections...", within: 60), "\(forward.text)")
            let options = sshd.clientOptions(proxy: nil) + ["-o", "HostKeyAlias=gateway-test"]
            let ssh = try #require(findExecutable("ssh"))
            let scp = try #require(findExecutable("scp"))
            let interactive = try EchoTimer(ssh, options + ["-p", "\(localPort)", "\(sshd.user)@127.0.0.1", "cat"], environment: environment)
            // Blocking reads stay off the concurrency pool, which the emulator needs.
            let warm = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Double?, any Error>) in
                Thread.detachNewThread { continuation.resume(returning: interactive.roundTrip("warm-up")) }
            }
            #expect(warm != nil, "the interactive ssh never echoed")

            let copy = Task {
                try await run(scp, ["-q"] + options + ["-P", "\(localPort)", scratch.file("bulk.bin"), "\(sshd.user)@127.0.0.1:\(scratch.file("up.bin"))"], environment: environment)
            }
            // Keystroke-sized probes while the copy runs, a few per second.
            let delays = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[Double?], any Error>) in
                Thread.detachNewThread {
                    var delays: [Double?] = []
                    Thread.sleep(forTimeInterval: 1.0)
                    for index in 0..<20 {
                        delays.append(interactive.roundTrip("probe-\(index)"))
                        Thread.sleep(forTimeInterval: 0.25)
                    }
                    continuation.resume(returning: delays)
                }
            }
            let result = try await copy.value
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                Thread.detachNewThread {
                    interactive.finish()
                    continuation.resume()
                }
            }
            #expect(result.status == 0, "scp: \(result.stderr)")
            #expect(try sha256(ofFile: scratch.file("up.bin")) == original)
            #expect(delays.allSatisfy { $0 != nil }, "an echo never came back")
            let sorted = delays.compactMap { $0 }.sorted()
            let session = try #require(emulator.server.registry.sessions.max(by: { $0.startDate < $1.startDate }))
            let rate = try #require(emulator.server.mgs.rateLimitStatistics(sessionID: session.id))
            // Measured, not asserted: how promptly keystrokes come back beside the bulk copy.
            if !sorted.isEmpty {
                print(String(format: "echo delay beside an 8 MiB scp under --limits aws: p50 %.0f ms, max %.0f ms (%d probes); client paused %d times",
                             sorted[sorted.count / 2] * 1000, sorted.last! * 1000, sorted.count, rate.clientPauses))
            }
            // Our own message-rate limiter keeps the session under the service's: never paused.
            #expect(rate.clientPauses == 0, "the service paused the client \(rate.clientPauses) times (\(rate.clientPausedSeconds) s)")
            forward.signalGroup(SIGINT)
            #expect(await forward.waitForExit(within: 20) == 0, "\(forward.text)")
        }
    }
}
