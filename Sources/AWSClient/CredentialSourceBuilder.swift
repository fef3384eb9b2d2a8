import AsyncHTTPClient
import Foundation
import SigV4

/// Builds the ordered credential sources for a configuration, the way botocore's `create_credential_resolver`
/// and `ProfileProviderBuilder` order them.
struct CredentialSourceBuilder: Sendable {
    let configuration: AWSClientConfiguration
    let httpClient: HTTPClient
    /// Where `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is resolved; tests point it at a loopback server.
    var containerRelativeBase = "http://169.254.170.2"

    var environment: [String: String] { self.configuration.environment }
    var shared: SharedConfig { self.configuration.sharedConfig }

    func defaultChain() -> [any CredentialSource] {
        var sources: [any CredentialSource] = []
        if !self.configuration.profileIsExplicit { sources.append(self.environmentSource()) }
        sources += self.profileSources(self.configuration.effectiveProfile, disableEnvironment: self.configuration.profileIsExplicit)
        sources.append(self.containerSource())
        sources.append(self.instanceMetadataSource())
        return sources
    }

    /// The sources that read a profile, in botocore order: assume role, web identity, SSO, credentials-file
    /// keys, `credential_process`, config-file keys.
    func profileSources(_ profile: String, disableEnvironment: Bool, visited: [String] = []) -> [any CredentialSource] {
        [
            ClosureCredentialSource("assume-role (profile \(profile))") {
                try await self.assumeRoleFromProfile(profile, visited: visited)
            },
            ClosureCredentialSource("web-identity (profile \(profile))") {
                try await self.webIdentity(profile: profile, useEnvironment: !disableEnvironment)
            },
            ClosureCredentialSource("sso (profile \(profile))") { try await self.sso(profile: profile) },
            ClosureCredentialSource("shared-credentials-file (profile \(profile))") {
                try self.staticKeys(self.shared.credentialsFileProfiles[profile], profile: profile, file: self.shared.credentialsFile)
            },
            ClosureCredentialSource("credential_process (profile \(profile))") {
                try await self.credentialProcess(profile: profile)
            },
            ClosureCredentialSource("config-file (profile \(profile))") {
                try self.staticKeys(self.shared.configFileProfiles[profile], profile: profile, file: self.shared.configFile)
            },
        ]
    }

    // MARK: - Environment and static keys

    func environmentSource() -> any CredentialSource {
        let environment = self.environment
        return ClosureCredentialSource("environment") {
            try Self.keyPair(
                environment, names: ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"),
                expiration: environment["AWS_CREDENTIAL_EXPIRATION"].flatMap(parseTimestamp),
                partial: AWSConfigurationError(
                    problem: "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set",
                    remedy: "set both, or unset both to use a profile"))
        }
    }

    func staticKeys(_ values: [String: String]?, profile: String, file: String) throws -> AWSCredentials? {
        guard let values else { return nil }
        return try Self.keyPair(
            values, names: ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token"),
            expiration: nil,
            partial: AWSConfigurationError(
                problem: "profile '\(profile)' in \(file) has only one of aws_access_key_id and aws_secret_access_key",
                remedy: "set both keys in that profile"))
    }

    /// A key pair from a dictionary: `nil` when neither half is there, `partial` when only one is.
    static func keyPair(
        _ values: [String: String], names: (key: String, secret: String, token: String, legacyToken: String),
        expiration: Date?, partial: AWSConfigurationError
    ) throws -> AWSCredentials? {
        let key = nonEmpty(values[names.key])
        let secret = nonEmpty(values[names.secret])
        guard key != nil || secret != nil else { return nil }
        guard let key, let secret else { throw partial }
        let token = nonEmpty(values[names.token]) ?? nonEmpty(values[names.legacyToken])
        return AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: token, expiration: expiration)
    }

    // MARK: - AssumeRole

    /// `role_arn` with `source_profile` or `credential_source`; `nil` when the profile has no `role_arn` (or
    /// has one only for web identity).
    func assumeRoleFromProfile(_ profile: String, visited: [String]) async throws -> AWSCredentials? {
        guard let values = self.shared.profile(profile), let roleARN = nonEmpty(values["role_arn"]) else { return nil }
        let sourceProfile = nonEmpty(values["source_profile"])
        let credentialSource = nonEmpty(values["credential_source"])
        let where_ = "profile '\(profile)' in \(self.shared.configFile)"
        if sourceProfile == nil && credentialSource == nil {
            if values["web_identity_token_file"] != nil { return nil }
            throw AWSConfigurationError(
                problem: "\(where_) has role_arn but neither source_profile nor credential_source",
                remedy: "add source_profile = <profile with credentials> or credential_source = Environment|Ec2InstanceMetadata|EcsContainer")
        }
        if sourceProfile != nil && credentialSource != nil {
            throw AWSConfigurationError(
                problem: "\(where_) has both source_profile and credential_source",
                remedy: "keep only one of them")
        }
        if values["mfa_serial"] != nil {
            throw AWSConfigurationError(
                problem: "\(where_) sets mfa_serial, and ssmgate cannot prompt for an MFA code",
                remedy: "get MFA session credentials first (for example `aws sts get-session-token` into a profile) and use a profile without mfa_serial")
        }
        let sourceName: String
        let sourceCredentials: AWSCredentials
        if let credentialSource {
            sourceName = "credential_source \(credentialSource)"
            let source: any CredentialSource
            switch credentialSource {
            case "Environment": source = self.environmentSource()
            case "Ec2InstanceMetadata": source = self.instanceMetadataSource()
            case "EcsContainer": source = self.containerSource()
            default:
                throw AWSConfigurationError(
                    problem: "\(where_) has credential_source = \(credentialSource), which is not supported",
                    remedy: "use Environment, Ec2InstanceMetadata or EcsContainer")
            }
            guard let found = try await source.load() else {
                throw AWSConfigurationError(
                    problem: "\(where_): credential_source = \(credentialSource) provided no credentials",
                    remedy: "make that source available (environment keys, container credentials or an instance role)")
            }
            sourceCredentials = found
        } else {
            let sourceProfile = sourceProfile!
            sourceName = "source_profile \(sourceProfile)"
            let chain = visited + [profile]
            if chain.contains(sourceProfile) && sourceProfile != profile {
                throw AWSConfigurationError(
                    problem: "profiles form a loop through source_profile: \((chain + [sourceProfile]).joined(separator: " -> "))",
                    remedy: "make one profile in the chain hold credentials instead of role_arn")
            }
            guard let sourceValues = self.shared.profile(sourceProfile) else {
                throw AWSConfigurationError(
                    problem: "\(where_) has source_profile = \(sourceProfile), which does not exist",
                    remedy: "define [profile \(sourceProfile)] or fix the name")
            }
            var found: AWSCredentials?
            if sourceProfile == profile {
                // A profile may name itself to assume its role with its own static keys.
                found = try self.staticKeys(sourceValues, profile: profile, file: self.shared.credentialsFile)
            } else {
                for source in self.profileSources(sourceProfile, disableEnvironment: true, visited: chain) {
                    if let credentials = try await source.load() {
                        found = credentials
                        break
                    }
                }
            }
            guard let found else {
                throw AWSConfigurationError(
                    problem: "source_profile '\(sourceProfile)' of \(where_) has no credentials",
                    remedy: "give it aws_access_key_id/aws_secret_access_key, sso settings, credential_process or its own role_arn")
            }
            sourceCredentials = found
        }
        let sts = STSClient(
            endpoint: self.configuration.endpoints.sts, region: self.configuration.region,
            credentials: StaticCredentialProvider(sourceCredentials), httpClient: self.httpClient,
            retry: self.configuration.retry)
        do {
            return try await sts.assumeRole(
                roleARN: roleARN, sessionName: nonEmpty(values["role_session_name"]) ?? Self.defaultSessionName(),
                externalID: nonEmpty(values["external_id"]), durationSeconds: values["duration_seconds"].flatMap { Int($0) })
        } catch let error as AWSServiceError {
            throw AWSCredentialsError(
                source: "assume-role (profile \(profile), using \(sourceName))",
                problem: "STS AssumeRole of \(roleARN) failed",
                remedy: "check that the source credentials are valid and that the role's trust policy allows them (and external_id if required)",
                underlying: error)
        }
    }

    static func defaultSessionName() -> String {
        "ssmgate-session-\(Int(Date().timeIntervalSince1970))"
    }

    // MARK: - Web identity

    func webIdentity(profile: String, useEnvironment: Bool) async throws -> AWSCredentials? {
        let values = self.shared.profile(profile) ?? [:]
        func setting(_ key: String, _ env: String) -> String? {
            (useEnvironment ? nonEmpty(self.environment[env]) : nil) ?? nonEmpty(values[key])
        }
        guard let tokenFile = setting("web_identity_token_file", "AWS_WEB_IDENTITY_TOKEN_FILE") else { return nil }
        let source = "web-identity (profile \(profile))"
        guard let roleARN = setting("role_arn", "AWS_ROLE_ARN") else {
            throw AWSConfigurationError(
                problem: "a web identity token file is configured (\(tokenFile)) but no role ARN",
                remedy: "set AWS_ROLE_ARN or role_arn in profile '\(profile)'")
        }
        let path = expandPath(tokenFile, home: self.configuration.homeDirectory)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AWSCredentialsError(
                source: source, problem: "cannot read the web identity token file \(path)",
                remedy: "check AWS_WEB_IDENTITY_TOKEN_FILE / web_identity_token_file and that the token is mounted")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let sts = STSClient(
            endpoint: self.configuration.endpoints.sts, region: self.configuration.region, credentials: nil,
            httpClient: self.httpClient, retry: self.configuration.retry)
        do {
            return try await sts.assumeRoleWithWebIdentity(
                roleARN: roleARN, sessionName: setting("role_session_name", "AWS_ROLE_SESSION_NAME") ?? Self.defaultSessionName(),
                webIdentityToken: token)
        } catch let error as AWSServiceError {
            throw AWSCredentialsError(
                source: source, problem: "STS AssumeRoleWithWebIdentity of \(roleARN) failed",
                remedy: "check that the token in \(path) is current and that the role trusts its issuer and audience",
                underlying: error)
        }
    }
}
