import AsyncHTTPClient
import Foundation
import SigV4

/// STS AssumeRole and AssumeRoleWithWebIdentity (Query protocol, XML): what `role_arn` profiles and
/// web-identity (EKS/IRSA, CI OIDC) setups turn into temporary credentials.
public struct STSClient: Sendable {
    let signed: AWSRequestSender
    let unsigned: AWSRequestSender
    static let apiVersion = "2011-06-15"

    /// - Parameter credentials: signs AssumeRole; AssumeRoleWithWebIdentity is sent unsigned.
    public init(configuration: AWSClientConfiguration, credentials: any AWSCredentialProvider, httpClient: HTTPClient) {
        self.init(
            endpoint: configuration.endpoints.sts, region: configuration.region, credentials: credentials,
            httpClient: httpClient, retry: configuration.retry)
    }

    init(
        endpoint: URL, region: String, credentials: (any AWSCredentialProvider)?, httpClient: HTTPClient,
        retry: AWSRetryPolicy
    ) {
        self.signed = AWSRequestSender(
            service: "sts", endpoint: endpoint, region: region, credentials: credentials, httpClient: httpClient,
            retry: retry)
        self.unsigned = AWSRequestSender(
            service: "sts", endpoint: endpoint, region: region, credentials: nil, httpClient: httpClient, retry: retry)
    }

    /// Assumes `roleARN` with the client's credentials.
    /// - Parameters:
    ///   - sessionName: shows in CloudTrail as the assumed-role session.
    ///   - sourceIdentity: a persistent identity for CloudTrail, when the role's trust policy asks for one.
    ///   - externalID: required by some cross-account trust policies.
    ///   - durationSeconds: `nil` takes the STS default (one hour).
    public func assumeRole(
        roleARN: String, sessionName: String, sourceIdentity: String? = nil, externalID: String? = nil,
        durationSeconds: Int? = nil
    ) async throws -> AWSCredentials {
        var parameters: [(String, String)] = []
        if let durationSeconds { parameters.append(("DurationSeconds", String(durationSeconds))) }
        if let externalID { parameters.append(("ExternalId", externalID)) }
        parameters.append(("RoleArn", roleARN))
        parameters.append(("RoleSessionName", sessionName))
        if let sourceIdentity { parameters.append(("SourceIdentity", sourceIdentity)) }
        let root = try await self.signed.query(
            action: "AssumeRole", version: Self.apiVersion, parameters: parameters, resource: roleARN)
        return try self.credentials(from: root["AssumeRoleResult", "Credentials"], operation: "AssumeRole", role: roleARN)
    }

    /// Exchanges an OIDC token for credentials of `roleARN` (unsigned call).
    public func assumeRoleWithWebIdentity(
        roleARN: String, sessionName: String, webIdentityToken: String
    ) async throws -> AWSCredentials {
        let parameters = [("RoleArn", roleARN), ("RoleSessionName", sessionName), ("WebIdentityToken", webIdentityToken)]
        let root: XMLNode
        do {
            root = try await self.unsigned.query(
                action: "AssumeRoleWithWebIdentity", version: Self.apiVersion, parameters: parameters, resource: roleARN)
        } catch let error as AWSServiceError {
            throw error.redacting([webIdentityToken])
        }
        return try self.credentials(
            from: root["AssumeRoleWithWebIdentityResult", "Credentials"], operation: "AssumeRoleWithWebIdentity",
            role: roleARN)
    }

    private func credentials(from node: XMLNode?, operation: String, role: String) throws -> AWSCredentials {
        guard let node, let key = node.child("AccessKeyId")?.text.nilIfEmpty,
            let secret = node.child("SecretAccessKey")?.text.nilIfEmpty,
            let token = node.child("SessionToken")?.text.nilIfEmpty
        else {
            throw self.signed.malformed(operation: operation, "the response has no Credentials", resource: role)
        }
        let expiration = node.child("Expiration").flatMap { parseTimestamp($0.text) }
        return AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: token, expiration: expiration)
    }
}

/// ISO 8601 timestamps as the credential sources write them: `2026-11-23T10:15:00Z`, with fractions, with an
/// offset, or with botocore's `UTC` suffix in the SSO cache.
func parseTimestamp(_ text: String) -> Date? {
    var value = text.trimmingCharacters(in: .whitespaces)
    if value.hasSuffix("UTC") { value = String(value.dropLast(3)) + "Z" }
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    if let date = formatter.date(from: value) { return date }
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.date(from: value)
}
