import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A long-running child (awscli start-session, ssmgate forward) in a session of its own, with its
/// output going to a file, so a test can wait for a line and signal the whole process group.
public final class BackgroundProcess: Sendable {
    public let pid: pid_t
    public let log: String

    public init(_ executable: String, _ arguments: [String], environment: [String: String]) throws {
        self.log = FileManager.default.temporaryDirectory.appendingPathComponent("ssmgate-bg-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log").path
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, self.log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own session and process group: signals for it never reach the test runner.
        posix_spawnattr_setflags(&attributes, 0x80)  // POSIX_SPAWN_SETSID (glibc)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else { throw ToolMissing(tool: "\(executable) (posix_spawn failed: \(status))") }
        self.pid = pid
    }

    public var text: String { (try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "" }

    public var isRunning: Bool {
        var status: Int32 = 0
        return waitpid(self.pid, &status, WNOHANG) == 0
    }

    /// Waits (bounded) until the output contains `needle`, `times` times or more.
    public func waitForOutput(containing needle: String, times: Int = 1, within seconds: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if self.text.components(separatedBy: needle).count > times { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Sends `signal` to the whole group.
    public func signalGroup(_ signal: CInt) {
        kill(-self.pid, signal)
    }

    /// Waits for the exit status (bounded); kills the group if it does not come.
    public func waitForExit(within seconds: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        var status: Int32 = 0
        while Date() < deadline {
            if waitpid(self.pid, &status, WNOHANG) == self.pid {
                return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -(status & 0x7f)
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        self.signalGroup(SIGKILL)
        _ = waitpid(self.pid, &status, 0)
        return nil
    }

    /// Kills what is left (the test ended early) and removes the log.
    public func cleanUp() {
        self.signalGroup(SIGKILL)
        var status: Int32 = 0
        _ = waitpid(self.pid, &status, WNOHANG)
        try? FileManager.default.removeItem(atPath: self.log)
    }
}
