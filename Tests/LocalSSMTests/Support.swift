import Foundation
import Testing

@testable import LocalSSM

/// Starts an emulator on an OS-chosen loopback port for the duration of `body`.
func withEmulator<T>(
    _ configuration: LocalSSMConfiguration = LocalSSMConfiguration(listenPort: 0, limits: .unlimited),
    _ body: (LocalEmulator) async throws -> T
) async throws -> T {
    let emulator = LocalEmulator(configuration: configuration)
    try await emulator.start()
    do {
        let result = try await body(emulator)
        await emulator.stop()
        return result
    } catch {
        await emulator.stop()
        throw error
    }
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String

    var json: [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(self.stdout.utf8))) as? [String: Any]
    }
}

/// Runs the real awscli against the emulator, with the emulator's test credentials unless overridden.
func aws(_ arguments: [String], endpoint: String, environment extra: [String: String] = [:]) async throws -> CommandResult {
    guard let executable = findExecutable("aws") else {
        Issue.record("awscli is not installed: run scripts/test.sh (or pip install awscli)")
        return CommandResult(status: -1, stdout: "", stderr: "aws not found")
    }
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }
    environment["AWS_ACCESS_KEY_ID"] = "test"
    environment["AWS_SECRET_ACCESS_KEY"] = "test"
    environment["AWS_DEFAULT_REGION"] = "us-east-1"
    environment["AWS_CONFIG_FILE"] = "/dev/null"
    environment["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"
    environment["AWS_EC2_METADATA_DISABLED"] = "true"
    environment["AWS_MAX_ATTEMPTS"] = "1"
    for (key, value) in extra { environment[key] = value }
    return try await run(executable, arguments + ["--endpoint-url", endpoint, "--output", "json"], environment: environment)
}

/// Runs a process on a plain thread: blocking a cooperative thread would starve the emulator it talks to.
func run(_ executable: String, _ arguments: [String], environment: [String: String]) async throws -> CommandResult {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try runBlocking(executable, arguments, environment: environment) })
        }
    }
}

func runBlocking(_ executable: String, _ arguments: [String], environment: [String: String]) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = environment
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Read both pipes before waiting, so a chatty child cannot block on a full pipe.
    let group = DispatchGroup()
    nonisolated(unsafe) var stdoutData = Data()
    nonisolated(unsafe) var stderrData = Data()
    group.enter()
    DispatchQueue.global().async {
        stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    stderrData = err.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return CommandResult(
        status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
        stderr: String(decoding: stderrData, as: UTF8.self))
}

func findExecutable(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") {
        let candidate = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}
