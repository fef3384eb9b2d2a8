import Foundation
import Testing
import TestSupport

@testable import LocalSSM

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
