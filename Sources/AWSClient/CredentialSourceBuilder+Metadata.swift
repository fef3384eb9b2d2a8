import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import SigV4

extension CredentialSourceBuilder {
    // MARK: - Container (ECS, EKS Pod Identity)

    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (against 169.254.170.2) or `…_FULL_URI` with an optional
    /// `Authorization` token from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (read on every refresh, it rotates)
    /// or `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    func containerSource() -> any CredentialSource {
        ClosureCredentialSource("container") { try await self.containerCredentials() }
    }

    func containerCredentials() async throws -> AWSCredentials? {
        let source = "container credentials"
        let url: String
        if let relative = nonEmpty(self.environment["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]) {
            url = self.containerRelativeBase + (relative.hasPrefix("/") ? relative : "/" + relative)
        } else if let full = nonEmpty(self.environment["AWS_CONTAINER_CREDENTIALS_FULL_URI"]) {
            guard let parsed = URL(string: full), Self.isAllowedContainerURL(parsed) else {
                throw AWSConfigurationError(
                    problem: "AWS_CONTAINER_CREDENTIALS_FULL_URI \(full) is not allowed",
                    remedy: "use https, or http to a loopback address or the ECS/EKS link-local address")
            }
            url = full
        } else {
            return nil
        }
        var headers: [(String, String)] = []
        if let file = nonEmpty(self.environment["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]) {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw AWSCredentialsError(
                    source: source, problem: "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \(file)",
                    remedy: "check that the token file is mounted")
            }
            headers.append(("Authorization", String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)))
        } else if let token = nonEmpty(self.environment["AWS_CONTAINER_AUTHORIZATION_TOKEN"]) {
            headers.append(("Authorization", token))
        }
        if let token = headers.first?.1, token.contains(where: { $0 == "\r" || $0 == "\n" }) {
            throw AWSConfigurationError(
                problem: "the container authorization token contains a line break", remedy: "fix the token value")
        }
        var lastError: String = ""
        for attempt in 1...3 {
            do {
                let response = try await self.plainRequest(url, method: .GET, headers: headers, timeout: .seconds(2))
                guard response.status == 200 else {
                    lastError = "HTTP \(response.status)"
                    if response.status >= 400 && response.status < 500 { break }
                    continue
                }
                return try Self.metadataCredentials(response.body, source: source, tokenKey: "Token")
            } catch let error as AWSCredentialsError {
                throw error
            } catch {
                lastError = "\(error)"
                if attempt < 3 { try await Task.sleep(for: .milliseconds(200)) }  // retry backoff
            }
        }
        throw AWSCredentialsError(
            source: source, problem: "the container credentials endpoint \(url) failed (\(lastError))",
            remedy: "check the task role / pod identity association and the AWS_CONTAINER_* variables")
    }

    static func isAllowedContainerURL(_ url: URL) -> Bool {
        guard let scheme = url.scheme?.lowercased(), let host = url.host?.lowercased() else { return false }
        if scheme == "https" { return true }
        guard scheme == "http" else { return false }
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return bare == "localhost" || bare.hasPrefix("127.") || bare == "::1" || bare == "169.254.170.2"
            || bare == "169.254.170.23" || bare == "fd00:ec2::23"
    }

    static func metadataCredentials(_ body: [UInt8], source: String, tokenKey: String) throws -> AWSCredentials {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let key = object["AccessKeyId"] as? String, let secret = object["SecretAccessKey"] as? String
        else {
            throw AWSCredentialsError(
                source: source, problem: "the metadata answer has no AccessKeyId/SecretAccessKey",
                remedy: "check the role attached to this task, pod or instance")
        }
        if let code = object["Code"] as? String, code != "Success" {
            throw AWSCredentialsError(
                source: source, problem: "the metadata service reported \(code)",
                remedy: "check the role attached to this instance")
        }
        return AWSCredentials(
            accessKeyID: key, secretAccessKey: secret, sessionToken: object[tokenKey] as? String,
            expiration: (object["Expiration"] as? String).flatMap(parseTimestamp))
    }

    // MARK: - Instance metadata (IMDSv2)

    func instanceMetadataSource() -> any CredentialSource {
        ClosureCredentialSource("instance-metadata") { try await self.instanceMetadataCredentials() }
    }

    /// The settings botocore reads for IMDS; short timeouts and one attempt by default, so a laptop without
    /// IMDS is not slowed down.
    struct InstanceMetadataSettings {
        var endpoint: String
        var timeout: TimeAmount
        var attempts: Int
        var v1Disabled: Bool
    }

    func instanceMetadataSettings() -> InstanceMetadataSettings? {
        let profile = self.shared.profile(self.configuration.effectiveProfile) ?? [:]
        if self.environment["AWS_EC2_METADATA_DISABLED"]?.lowercased() == "true" { return nil }
        var endpoint = nonEmpty(self.environment["AWS_EC2_METADATA_SERVICE_ENDPOINT"])
            ?? nonEmpty(profile["ec2_metadata_service_endpoint"])
        if endpoint == nil {
            let mode = (self.environment["AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"] ?? profile["ec2_metadata_service_endpoint_mode"])?.lowercased()
            endpoint = mode == "ipv6" ? "http://[fd00:ec2::254]" : "http://169.254.169.254"
        }
        while endpoint!.hasSuffix("/") { endpoint!.removeLast() }
        let seconds = (self.environment["AWS_METADATA_SERVICE_TIMEOUT"] ?? profile["metadata_service_timeout"]).flatMap(Double.init) ?? 1
        let attempts = (self.environment["AWS_METADATA_SERVICE_NUM_ATTEMPTS"] ?? profile["metadata_service_num_attempts"]).flatMap(Int.init) ?? 1
        let v1Disabled = (self.environment["AWS_EC2_METADATA_V1_DISABLED"] ?? profile["ec2_metadata_v1_disabled"])?.lowercased() == "true"
        return InstanceMetadataSettings(
            endpoint: endpoint!, timeout: .milliseconds(Int64(seconds * 1000)), attempts: max(1, attempts), v1Disabled: v1Disabled)
    }

    /// PUT a session token (TTL header), GET the role name, GET its credentials. An unreachable IMDS means
    /// "not on EC2": the chain just ends without credentials from here.
    func instanceMetadataCredentials() async throws -> AWSCredentials? {
        guard let settings = self.instanceMetadataSettings() else { return nil }
        let source = "instance-metadata"
        for attempt in 1...settings.attempts {
            do {
                var headers: [(String, String)] = []
                let tokenResponse = try await self.plainRequest(
                    settings.endpoint + "/latest/api/token", method: .PUT,
                    headers: [("x-aws-ec2-metadata-token-ttl-seconds", "21600")], timeout: settings.timeout)
                switch tokenResponse.status {
                case 200:
                    headers.append(("x-aws-ec2-metadata-token", String(decoding: tokenResponse.body, as: UTF8.self)))
                case 403, 404, 405:
                    // IMDSv1 only (or a proxy that does not forward PUT): go on without a token, as botocore does.
                    guard !settings.v1Disabled else {
                        throw AWSCredentialsError(
                            source: source, problem: "IMDS gave no session token (HTTP \(tokenResponse.status)) and IMDSv1 is disabled",
                            remedy: "enable IMDSv2 on the instance or unset AWS_EC2_METADATA_V1_DISABLED")
                    }
                default:
                    throw AWSCredentialsError(
                        source: source, problem: "IMDS refused a session token (HTTP \(tokenResponse.status))",
                        remedy: "check the instance's metadata options (hop limit, IMDSv2)")
                }
                let roleResponse = try await self.plainRequest(
                    settings.endpoint + "/latest/meta-data/iam/security-credentials/", method: .GET, headers: headers,
                    timeout: settings.timeout)
                guard roleResponse.status == 200 else { return nil }  // no instance profile attached
                let role = String(decoding: roleResponse.body, as: UTF8.self)
                    .split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
                guard !role.isEmpty else { return nil }
                let credentialsResponse = try await self.plainRequest(
                    settings.endpoint + "/latest/meta-data/iam/security-credentials/" + role, method: .GET,
                    headers: headers, timeout: settings.timeout)
                guard credentialsResponse.status == 200 else {
                    throw AWSCredentialsError(
                        source: source, problem: "IMDS answered HTTP \(credentialsResponse.status) for role \(role)",
                        remedy: "check the instance profile")
                }
                return try Self.metadataCredentials(credentialsResponse.body, source: "\(source) (role \(role))", tokenKey: "Token")
            } catch let error as AWSCredentialsError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                if attempt == settings.attempts { return nil }
            }
        }
        return nil
    }

    /// The instance's region from IMDS, for callers that fall back to it explicitly (`nil` off EC2).
    func instanceMetadataRegion() async -> String? {
        guard let settings = self.instanceMetadataSettings() else { return nil }
        do {
            let token = try await self.plainRequest(
                settings.endpoint + "/latest/api/token", method: .PUT,
                headers: [("x-aws-ec2-metadata-token-ttl-seconds", "21600")], timeout: settings.timeout)
            let headers = token.status == 200 ? [("x-aws-ec2-metadata-token", String(decoding: token.body, as: UTF8.self))] : []
            let response = try await self.plainRequest(
                settings.endpoint + "/latest/meta-data/placement/region", method: .GET, headers: headers, timeout: settings.timeout)
            guard response.status == 200 else { return nil }
            return nonEmpty(String(decoding: response.body, as: UTF8.self))
        } catch {
            return nil
        }
    }

    func plainRequest(
        _ url: String, method: HTTPMethod, headers: [(String, String)], timeout: TimeAmount
    ) async throws -> AWSRequestSender.Response {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.headers.add(name: "User-Agent", value: "ssmgate")
        if method == .PUT { request.body = .bytes(ByteBuffer()) }
        let response = try await self.httpClient.execute(request, timeout: timeout)
        let body = try await response.body.collect(upTo: 1 << 20)
        return AWSRequestSender.Response(status: Int(response.status.code), headers: response.headers, body: Array(body.readableBytesView))
    }
}
