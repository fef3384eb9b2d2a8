import AsyncHTTPClient
import Foundation
import SigV4
import Synchronization

/// The AWS CLI's default credential chain, with caching and refresh, so the gateway authenticates wherever
/// `aws ssm start-session` would and keeps working across credential expiry.
///
/// Order (botocore `create_credential_resolver`): environment keys (skipped when `--profile` is given) →
/// the profile: `role_arn` with `source_profile`/`credential_source` (AssumeRole, chained) → web identity →
/// SSO → static keys in the credentials file → `credential_process` → static keys in the config file →
/// ECS/EKS container credentials → EC2 instance metadata (IMDSv2). The first source that is configured wins
/// and is used again for every refresh; a configured source that fails is an error, not a reason to try the next.
///
/// Credentials are refreshed before they expire: from 15 minutes before expiry (or half the lifetime of
/// short-lived ones) callers wait for a refresh, and if that refresh fails while more than 10 minutes (or a
/// quarter of the lifetime) remain the old credentials are still used, as botocore's advisory and mandatory
/// windows do. Concurrent callers share one refresh.
public final class CredentialChain: AWSCredentialProvider {
    let sources: [any CredentialSource]
    let now: @Sendable () -> Date
    let advisoryRefresh: TimeInterval
    let mandatoryRefresh: TimeInterval
    private let state = Mutex(State())

    private struct State {
        var chosen: Int?
        var cached: AWSCredentials?
        var fetchedAt: Date?
        var refresh: Task<AWSCredentials, any Error>?
    }

    /// The chain for `configuration` (its environment, profile and files).
    /// - Parameter httpClient: used for STS, SSO, container and instance metadata calls; owned by the caller.
    public convenience init(configuration: AWSClientConfiguration, httpClient: HTTPClient) {
        let builder = CredentialSourceBuilder(configuration: configuration, httpClient: httpClient)
        self.init(sources: builder.defaultChain())
    }

    /// A chain over explicit sources, with an injectable clock for tests.
    init(
        sources: [any CredentialSource], now: @escaping @Sendable () -> Date = { Date() },
        advisoryRefresh: TimeInterval = 15 * 60, mandatoryRefresh: TimeInterval = 10 * 60
    ) {
        self.sources = sources
        self.now = now
        self.advisoryRefresh = advisoryRefresh
        self.mandatoryRefresh = mandatoryRefresh
    }

    /// The name of the source that produced the current credentials (`environment`, `sso (profile dev)`…),
    /// for diagnostics; `nil` before the first successful call.
    public var sourceDescription: String? {
        self.state.withLock { state in state.chosen.map { self.sources[$0].name } }
    }

    /// Forgets the cached credentials, so the next call fetches new ones (after AWS said they expired).
    public func invalidateCredentials() {
        self.state.withLock {
            $0.cached = nil
            $0.fetchedAt = nil
        }
    }

    public func credentials() async throws -> AWSCredentials {
        let now = self.now()
        enum Decision {
            case use(AWSCredentials)
            case wait(Task<AWSCredentials, any Error>, fallback: AWSCredentials?)
        }
        let decision: Decision = self.state.withLock { state in
            if let cached = state.cached, !self.isWithin(self.advisoryRefresh, cached, fetchedAt: state.fetchedAt, now: now) {
                return .use(cached)
            }
            let fallback = state.cached.flatMap { cached in
                self.isWithin(self.mandatoryRefresh, cached, fetchedAt: state.fetchedAt, now: now) ? nil : cached
            }
            if let running = state.refresh { return .wait(running, fallback: fallback) }
            let preferred = state.chosen
            let task = Task { try await self.refresh(preferred: preferred) }
            state.refresh = task
            return .wait(task, fallback: fallback)
        }
        switch decision {
        case .use(let credentials):
            return credentials
        case .wait(let task, let fallback):
            do {
                return try await task.value
            } catch {
                // Advisory window: the old credentials still have a safe margin, keep using them.
                if let fallback { return fallback }
                throw error
            }
        }
    }

    /// Whether `credentials` expire within `window` (shrunk to a fraction of their lifetime for short-lived
    /// ones, so a 5-minute credential is not refreshed on every call).
    private func isWithin(_ window: TimeInterval, _ credentials: AWSCredentials, fetchedAt: Date?, now: Date) -> Bool {
        guard let expiration = credentials.expiration else { return false }
        var margin = window
        if let fetchedAt {
            let lifetime = expiration.timeIntervalSince(fetchedAt)
            margin = min(window, lifetime * (window == self.advisoryRefresh ? 0.5 : 0.25))
        }
        return expiration.timeIntervalSince(now) < margin
    }

    private func refresh(preferred: Int?) async throws -> AWSCredentials {
        do {
            let (index, credentials) = try await self.resolve(preferred: preferred)
            let fetchedAt = self.now()
            if let expiration = credentials.expiration, expiration <= fetchedAt {
                throw AWSCredentialsError(
                    source: self.sources[index].name, problem: "the credentials it returned are already expired",
                    remedy: "refresh that source (log in again or fix its clock) and retry")
            }
            self.state.withLock {
                $0.chosen = index
                $0.cached = credentials
                $0.fetchedAt = fetchedAt
                $0.refresh = nil
            }
            return credentials
        } catch {
            self.state.withLock { $0.refresh = nil }
            throw error
        }
    }

    private func resolve(preferred: Int?) async throws -> (Int, AWSCredentials) {
        if let preferred, let credentials = try await self.sources[preferred].load() {
            return (preferred, credentials)
        }
        for (index, source) in self.sources.enumerated() {
            if let credentials = try await source.load() { return (index, credentials) }
        }
        throw AWSConfigurationError(
            problem: "no AWS credentials found (tried: \(self.sources.map(\.name).joined(separator: ", ")))",
            remedy: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, run `aws configure` or `aws sso login`, "
                + "or choose a profile that has credentials with --profile or AWS_PROFILE")
    }
}

/// One place credentials can come from.
protocol CredentialSource: Sendable {
    /// For errors and diagnostics, such as `assume-role (profile dev)`.
    var name: String { get }
    /// `nil` when this source is not set up here, so the chain moves on; throws when it is set up but fails.
    func load() async throws -> AWSCredentials?
}

/// A source made of a closure: used for the chain's simple sources and by tests.
struct ClosureCredentialSource: CredentialSource {
    let name: String
    let body: @Sendable () async throws -> AWSCredentials?

    init(_ name: String, _ body: @escaping @Sendable () async throws -> AWSCredentials?) {
        self.name = name
        self.body = body
    }

    func load() async throws -> AWSCredentials? { try await self.body() }
}
