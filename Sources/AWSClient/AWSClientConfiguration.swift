import AsyncHTTPClient
import Foundation

/// Which region, profile and endpoints the AWS calls use, resolved once the way the AWS CLI resolves them, so
/// that `ssmgate --profile X` talks to exactly what `aws --profile X ssm …` would.
///
/// It also keeps the environment and shared files it was resolved from, because the credential chain needs the
/// same view; its printed forms show only region, profile and endpoints.
public struct AWSClientConfiguration: Sendable {
    /// The region of every call (SigV4 scope and default endpoints).
    public var region: String
    /// The profile named with `--profile`, `AWS_PROFILE` or `AWS_DEFAULT_PROFILE`; `nil` means `default`.
    public var profile: String?
    /// `--endpoint-url`: applies to SSM calls only, as in awscli.
    public var endpointOverride: URL?
    /// Per-service endpoints, with the override and configured endpoint URLs applied.
    public var endpoints: AWSServiceEndpoints
    /// Retries for throttling, 5xx and transport errors.
    public var retry: AWSRetryPolicy
    /// Whether the profile was named explicitly (`--profile`); as in botocore, that skips the environment's
    /// access keys.
    public var profileIsExplicit: Bool

    /// The environment the configuration was resolved from (it holds secrets: never printed).
    var environment: [String: String]
    var homeDirectory: String
    var sharedConfig: SharedConfig

    /// The profile whose settings apply.
    public var effectiveProfile: String { self.profile ?? "default" }

    /// A configuration with explicit endpoints and no profile or environment behind it: for the embedded
    /// emulator (`serve --local`) and tests, where nothing should be read from `~/.aws`. A ``CredentialChain``
    /// built from it finds nothing, so pass credentials explicitly (``StaticCredentialProvider``).
    public init(region: String, endpoints: AWSServiceEndpoints? = nil, retry: AWSRetryPolicy = AWSRetryPolicy()) {
        self.region = region
        self.profile = nil
        self.endpointOverride = nil
        self.endpoints = endpoints ?? .defaults(region: region)
        self.retry = retry
        self.profileIsExplicit = false
        self.environment = ["AWS_EC2_METADATA_DISABLED": "true"]
        self.homeDirectory = "/nonexistent"
        self.sharedConfig = SharedConfig(configFile: "(none)", credentialsFile: "(none)")
    }

    /// Resolves region, profile and endpoints.
    ///
    /// - Parameters:
    ///   - environment: the process environment (passed in so tests and embedders control it).
    ///   - profile: `--profile`, which beats `AWS_PROFILE` and `AWS_DEFAULT_PROFILE`.
    ///   - region: `--region`, which beats `AWS_REGION`, `AWS_DEFAULT_REGION` and the profile's `region`.
    ///   - endpointURL: `--endpoint-url`, for SSM only.
    ///   - homeDirectory: where `~/.aws` is.
    /// - Throws: ``AWSConfigurationError`` for a named profile that does not exist, a malformed file or URL, or
    ///   no region anywhere.
    public static func resolve(
        environment: [String: String], profile: String?, region: String?, endpointURL: String?, homeDirectory: String
    ) throws -> AWSClientConfiguration {
        let shared = try SharedConfig.load(environment: environment, homeDirectory: homeDirectory)
        let explicitProfile = profile.flatMap { $0.isEmpty ? nil : $0 }
        let profileName = explicitProfile ?? nonEmpty(environment["AWS_PROFILE"]) ?? nonEmpty(environment["AWS_DEFAULT_PROFILE"])
        if let profileName, shared.profile(profileName) == nil {
            let origin = explicitProfile != nil ? "--profile" : (environment["AWS_PROFILE"] != nil ? "AWS_PROFILE" : "AWS_DEFAULT_PROFILE")
            throw AWSConfigurationError(
                problem: "the profile '\(profileName)' (from \(origin)) is not in \(shared.configFile) or \(shared.credentialsFile)",
                remedy: "add [profile \(profileName)] to the config file (or [\(profileName)] to the credentials file), "
                    + "or choose an existing profile (`aws configure list-profiles`)")
        }
        let settings = shared.profile(profileName ?? "default") ?? [:]
        let resolvedRegion = nonEmpty(region) ?? nonEmpty(environment["AWS_REGION"])
            ?? nonEmpty(environment["AWS_DEFAULT_REGION"]) ?? nonEmpty(settings["region"])
        guard let resolvedRegion else {
            throw AWSConfigurationError.missingRegion(
                "no AWS region is set (profile '\(profileName ?? "default")')",
                remedy: "pass --region, set AWS_REGION, or add `region = us-east-1` (for example) to that profile in \(shared.configFile)")
        }
        var override: URL?
        if let endpointURL = nonEmpty(endpointURL) {
            override = try AWSServiceEndpoints.parse(endpointURL, origin: "--endpoint-url")
        }
        let endpoints = try AWSServiceEndpoints.resolve(
            region: resolvedRegion, ssmOverride: override, environment: environment, profile: settings,
            profileName: profileName ?? "default", shared: shared)
        var configuration = AWSClientConfiguration(
            region: resolvedRegion, endpoints: endpoints, retry: AWSRetryPolicy.resolve(environment: environment, profile: settings))
        configuration.profile = profileName
        configuration.endpointOverride = override
        configuration.profileIsExplicit = explicitProfile != nil
        configuration.environment = environment
        configuration.homeDirectory = homeDirectory
        configuration.sharedConfig = shared
        return configuration
    }
}

extension AWSClientConfiguration {
    /// Like ``resolve(environment:profile:region:endpointURL:homeDirectory:)``, but when no region is configured
    /// anywhere, asks EC2 instance metadata for the instance's region (for gateways running on EC2). Off EC2 the
    /// lookup fails fast and the missing-region error is thrown.
    public static func resolve(
        environment: [String: String], profile: String?, region: String?, endpointURL: String?, homeDirectory: String,
        instanceMetadataRegionUsing httpClient: HTTPClient
    ) async throws -> AWSClientConfiguration {
        do {
            return try self.resolve(
                environment: environment, profile: profile, region: region, endpointURL: endpointURL,
                homeDirectory: homeDirectory)
        } catch let error as AWSConfigurationError where error.isMissingRegion {
            // A provisional region only to read the profile's IMDS settings.
            let probe = try self.resolve(
                environment: environment, profile: profile, region: "us-east-1", endpointURL: endpointURL,
                homeDirectory: homeDirectory)
            guard let found = await CredentialSourceBuilder(configuration: probe, httpClient: httpClient).instanceMetadataRegion()
            else { throw error }
            return try self.resolve(
                environment: environment, profile: profile, region: found, endpointURL: endpointURL,
                homeDirectory: homeDirectory)
        }
    }
}

func nonEmpty(_ value: String?) -> String? {
    guard let value, !value.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
    return value
}

extension AWSClientConfiguration: CustomStringConvertible {
    public var description: String {
        "AWSClientConfiguration(region: \(self.region), profile: \(self.effectiveProfile), ssm: \(self.endpoints.ssm.absoluteString))"
    }
}

extension AWSClientConfiguration: CustomReflectable {
    /// Hides the environment, which may hold `AWS_SECRET_ACCESS_KEY`, from `dump` and debuggers.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "region": self.region, "profile": self.profile as Any, "endpointOverride": self.endpointOverride as Any,
                "endpoints": self.endpoints, "retry": self.retry,
            ],
            displayStyle: .struct)
    }
}

/// How many times a call is tried and how long to wait between tries (the SDKs' standard mode: 3 attempts,
/// exponential backoff with full jitter, capped at 20 s).
public struct AWSRetryPolicy: Sendable, Equatable {
    /// Total attempts, the first included (`AWS_MAX_ATTEMPTS`, profile `max_attempts`).
    public var maximumAttempts: Int
    /// The backoff base: attempt n waits up to `baseDelay * 2^(n-1)`.
    public var baseDelay: Duration
    public var maximumDelay: Duration

    public init(maximumAttempts: Int = 3, baseDelay: Duration = .seconds(1), maximumDelay: Duration = .seconds(20)) {
        self.maximumAttempts = max(1, maximumAttempts)
        self.baseDelay = baseDelay
        self.maximumDelay = maximumDelay
    }

    static func resolve(environment: [String: String], profile: [String: String]) -> AWSRetryPolicy {
        let attempts = environment["AWS_MAX_ATTEMPTS"].flatMap(Int.init) ?? profile["max_attempts"].flatMap(Int.init) ?? 3
        return AWSRetryPolicy(maximumAttempts: attempts)
    }

    /// The wait before attempt `attempt + 1` (full jitter).
    func delay(afterAttempt attempt: Int) -> Duration {
        let exponent = min(attempt - 1, 16)
        let ceiling = min(self.baseDelay * (1 << exponent), self.maximumDelay)
        return ceiling * Double.random(in: 0...1)
    }
}
