import Foundation
import SigV4

extension CredentialSourceBuilder {
    /// `credential_process`: runs the command (split like a shell would, no shell involved, as botocore does)
    /// and reads its Version 1 JSON from stdout.
    func credentialProcess(profile: String) async throws -> AWSCredentials? {
        guard let command = nonEmpty(self.shared.profile(profile)?["credential_process"]) else { return nil }
        let source = "credential_process (profile \(profile))"
        let arguments = try Self.splitCommandLine(command)
        guard let program = arguments.first else { return nil }
        let result: ProcessOutput
        do {
            result = try await Self.run(program, Array(arguments.dropFirst()), environment: self.environment)
        } catch {
            throw AWSCredentialsError(
                source: source, problem: "could not start \(program): \(error)",
                remedy: "check the credential_process command in profile '\(profile)'")
        }
        guard result.status == 0 else {
            let detail = result.stderr.split(whereSeparator: \.isNewline).first.map { ": \($0.prefix(300))" } ?? ""
            throw AWSCredentialsError(
                source: source, problem: "\(program) exited with status \(result.status)\(detail)",
                remedy: "run the command by hand to see why, then fix it or log in again")
        }
        guard let object = try? JSONSerialization.jsonObject(with: result.stdout) as? [String: Any] else {
            throw AWSCredentialsError(
                source: source, problem: "\(program) did not print a JSON object",
                remedy: "it must print {\"Version\": 1, \"AccessKeyId\": …, \"SecretAccessKey\": …}")
        }
        guard jsonNumber(object["Version"]) == 1 else {
            throw AWSCredentialsError(
                source: source, problem: "\(program) printed Version \(object["Version"].map { "\($0)" } ?? "(none)")",
                remedy: "only Version 1 output is supported")
        }
        guard let key = object["AccessKeyId"] as? String, let secret = object["SecretAccessKey"] as? String else {
            throw AWSCredentialsError(
                source: source, problem: "\(program)'s output lacks AccessKeyId or SecretAccessKey",
                remedy: "fix the command's output")
        }
        var expiration: Date?
        if let text = object["Expiration"] as? String {
            guard let date = parseTimestamp(text) else {
                throw AWSCredentialsError(
                    source: source, problem: "\(program)'s Expiration '\(text)' is not an ISO 8601 time",
                    remedy: "print it like 2026-11-23T10:15:00Z")
            }
            expiration = date
        }
        return AWSCredentials(
            accessKeyID: key, secretAccessKey: secret, sessionToken: object["SessionToken"] as? String,
            expiration: expiration)
    }

    struct ProcessOutput: Sendable {
        var status: Int32
        var stdout: Data
        var stderr: String
    }

    /// Runs on a plain thread: waiting for a child on a cooperative thread would starve the pool.
    static func run(_ program: String, _ arguments: [String], environment: [String: String]) async throws -> ProcessOutput {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(
                    with: Result {
                        let process = Process()
                        if program.contains("/") {
                            process.executableURL = URL(fileURLWithPath: program)
                            process.arguments = arguments
                        } else {
                            // PATH lookup through env, as subprocess does without a shell.
                            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                            process.arguments = [program] + arguments
                        }
                        process.environment = environment
                        let out = Pipe()
                        let err = Pipe()
                        process.standardOutput = out
                        process.standardError = err
                        process.standardInput = FileHandle.nullDevice
                        try process.run()
                        nonisolated(unsafe) var stderrData = Data()
                        let group = DispatchGroup()
                        group.enter()
                        DispatchQueue.global().async {
                            stderrData = err.fileHandleForReading.readDataToEndOfFile()
                            group.leave()
                        }
                        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
                        group.wait()
                        process.waitUntilExit()
                        return ProcessOutput(
                            status: process.terminationStatus, stdout: stdoutData,
                            stderr: String(decoding: stderrData, as: UTF8.self))
                    })
            }
        }
    }

    /// POSIX shell-style splitting (`shlex.split`): whitespace separates, quotes group, backslash escapes.
    static func splitCommandLine(_ command: String) throws -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var quote: Character?
        var escaping = false
        for character in command {
            if escaping {
                current.append(character)
                escaping = false
                inWord = true
            } else if let open = quote {
                if character == open {
                    quote = nil
                } else if character == "\\" && open == "\"" {
                    escaping = true
                } else {
                    current.append(character)
                }
            } else if character == "\"" || character == "'" {
                quote = character
                inWord = true
            } else if character == "\\" {
                escaping = true
            } else if character.isWhitespace {
                if inWord { words.append(current) }
                current = ""
                inWord = false
            } else {
                current.append(character)
                inWord = true
            }
        }
        guard quote == nil, !escaping else {
            throw AWSConfigurationError(
                problem: "credential_process has an unterminated quote or escape: \(command)",
                remedy: "balance the quotes")
        }
        if inWord { words.append(current) }
        return words
    }
}
