import Foundation
import Synchronization
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A long-running child (awscli start-session, ssmgate forward) in its own process group, with
/// its output collected as it comes, so a test can wait for a line and signal the whole group.
final class BackgroundProcess: Sendable {
    let process: Process
    final class Output: Sendable {
        let text = Mutex("")
    }
    let output = Output()

    init(_ executable: String, _ arguments: [String], environment: [String: String]) throws {
        guard let setsid = findExecutable("setsid") else { throw ToolMissing(tool: "setsid (util-linux)") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: setsid)
        process.arguments = [executable] + arguments
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        self.process = process
        let output = self.output
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                return
            }
            output.text.withLock { $0 += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
    }

    var text: String { self.output.text.withLock { $0 } }

    /// Waits (bounded) until the output contains `needle`; false if the process ended or time ran out.
    func waitForOutput(containing needle: String, within seconds: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if self.text.contains(needle) { return true }
            if !self.process.isRunning { return self.text.contains(needle) }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Sends `signal` to the whole group (setsid made the child its leader).
    func signalGroup(_ signal: CInt) {
        kill(-self.process.processIdentifier, signal)
    }

    /// Waits for the exit (bounded); kills the group if it does not come.
    func waitForExit(within seconds: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while self.process.isRunning, Date() < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        if self.process.isRunning {
            self.signalGroup(SIGKILL)
            self.process.waitUntilExit()
            return nil
        }
        return self.process.terminationStatus
    }
}
