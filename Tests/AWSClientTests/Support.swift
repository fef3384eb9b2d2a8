import AsyncHTTPClient
import Foundation
import Synchronization
import TestSupport
import Testing

@testable import AWSClient

/// A throwaway HOME with `~/.aws` files, removed afterwards.
struct TemporaryHome {
    let path: String

    func write(_ relativePath: String, _ text: String) throws {
        let url = URL(fileURLWithPath: self.path).appendingPathComponent(relativePath)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }

    /// Writes an executable script and returns its path.
    func script(_ name: String, _ text: String) throws -> String {
        try self.write(name, text)
        let full = "\(self.path)/\(name)"
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: full)
        return full
    }
}

func withHome<T>(_ body: (TemporaryHome) async throws -> T) async throws -> T {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("awsclient-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(TemporaryHome(path: path))
}

@discardableResult
func withHTTPClient<T>(_ body: (HTTPClient) async throws -> T) async throws -> T {
    let client = HTTPClient(eventLoopGroupProvider: .singleton)
    do {
        let result = try await body(client)
        try await client.shutdown()
        return result
    } catch {
        try? await client.shutdown()
        throw error
    }
}

/// The environment every test starts from: no instance metadata lookups, fast retries.
let quietEnvironment = ["AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "3"]

func configuration(
    _ home: TemporaryHome, _ environment: [String: String], profile: String? = nil, region: String? = "us-east-1",
    endpointURL: String? = nil
) throws -> AWSClientConfiguration {
    var configuration = try AWSClientConfiguration.resolve(
        environment: quietEnvironment.merging(environment) { $1 }, profile: profile, region: region,
        endpointURL: endpointURL, homeDirectory: home.path)
    configuration.retry = AWSRetryPolicy(maximumAttempts: 3, baseDelay: .milliseconds(5))
    return configuration
}

/// A clock tests move by hand.
final class TestClock: Sendable {
    private let current = Mutex(Date(timeIntervalSince1970: 1_800_000_000))
    var now: Date { self.current.withLock { $0 } }
    func advance(by seconds: TimeInterval) { self.current.withLock { $0 += seconds } }
}

/// Counts how often something ran.
final class Counter: Sendable {
    private let value = Mutex(0)
    @discardableResult func increment() -> Int { self.value.withLock { $0 += 1; return $0 } }
    var count: Int { self.value.withLock { $0 } }
}

func isoString(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: date)
}

func stsCredentialsXML(action: String, key: String, secret: String, token: String, expiration: Date) -> String {
    """
    <\(action)Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
      <\(action)Result>
        <Credentials>
          <AccessKeyId>\(key)</AccessKeyId>
          <SecretAccessKey>\(secret)</SecretAccessKey>
          <SessionToken>\(token)</SessionToken>
          <Expiration>\(isoString(expiration))</Expiration>
        </Credentials>
      </\(action)Result>
      <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
    </\(action)Response>
    """
}
