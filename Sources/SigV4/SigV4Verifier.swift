import Foundation

/// Who signed a request that verified: what the emulator authorizes and logs.
public struct VerifiedCaller: Sendable, Hashable {
    public let accessKeyID: String
    /// The region of the credential scope (always the verifier's region).
    public let region: String
    /// The service of the credential scope, one of the verifier's services: check it matches the API the
    /// request is for when one verifier serves several.
    public let service: String
    /// The request's signing time (`X-Amz-Date` or `Date`).
    public let signedAt: Date
}

/// Checks SigV4-signed requests the way an AWS endpoint does, for the local emulator: awscli/botocore and our
/// own client must be accepted exactly when AWS would accept them, and refused with the errors AWS sends.
///
/// Both the `Authorization` header and presigned-URL query authentication (`X-Amz-Algorithm`,
/// `X-Amz-Credential`, `X-Amz-Signature`, …) are understood. The canonical request is rebuilt with the same
/// rules as ``SigV4Signer`` over the headers the client listed in `SignedHeaders`.
public struct SigV4Verifier: Sendable {
    /// The one region this endpoint serves; a credential scoped to another is refused.
    public let region: String
    /// The service names (`ssm`, `ec2`, …) this endpoint accepts in credential scopes.
    public let services: Set<String>
    /// How far a request's timestamp may be from `now`, either way. AWS uses 15 minutes for most services.
    public let allowedClockSkew: Duration
    private let credentialsForAccessKeyID: @Sendable (String) -> AWSCredentials?

    /// - Parameter credentials: looks up the credentials of an access key id; `nil` for unknown keys. Called
    ///   on the verifying thread, so it must not block.
    public init(
        region: String,
        services: Set<String>,
        allowedClockSkew: Duration = .seconds(15 * 60),
        credentials: @escaping @Sendable (_ accessKeyID: String) -> AWSCredentials?
    ) {
        self.region = region
        self.services = services
        self.allowedClockSkew = allowedClockSkew
        self.credentialsForAccessKeyID = credentials
    }

    /// - Parameter credentials: the known credentials; when two share an access key id, the last wins.
    public init(
        region: String,
        services: Set<String>,
        allowedClockSkew: Duration = .seconds(15 * 60),
        credentials: [AWSCredentials]
    ) {
        let byID = Dictionary(credentials.map { ($0.accessKeyID, $0) }, uniquingKeysWith: { _, last in last })
        self.init(region: region, services: services, allowedClockSkew: allowedClockSkew) { byID[$0] }
    }

    /// Verifies a received request.
    /// - Parameters:
    ///   - request: the request as received: raw path and query, headers in any case, and the body (or its
    ///     hash).
    ///   - now: the server's clock.
    public func verify(_ request: SigV4Request, now: Date) -> Result<VerifiedCaller, SigV4VerificationError> {
        Result { () throws(SigV4VerificationError) in try self.check(request, now: AmzTimestamp(now)) }
    }

    /// Verifies a received request given by its parts; see ``verify(_:now:)``.
    public func verify(
        method: String,
        path: String,
        query: String,
        headers: [(name: String, value: String)],
        body: [UInt8],
        now: Date
    ) -> Result<VerifiedCaller, SigV4VerificationError> {
        self.verify(SigV4Request(method: method, path: path, query: query, headers: headers, body: body), now: now)
    }
}

// MARK: - The checks, in the order AWS applies them

extension SigV4Verifier {
    /// What a request claims about its signature, from either the header or the query.
    private struct Claim {
        var algorithm: String
        var credential: String
        var signedHeaders: [String]
        var signature: String
        var timestamp: AmzTimestamp
        var sessionToken: String?
        /// Presigned URLs only: the validity in seconds.
        var expires: Int64?
        var isPresigned: Bool
    }

    private static let maximumPresignedExpiry: Int64 = 604_800
    private static let maximumEcho = 1024

    private func check(_ request: SigV4Request, now: AmzTimestamp) throws(SigV4VerificationError) -> VerifiedCaller {
        let claim = try self.claim(of: request)
        try self.checkTime(of: claim, now: now)
        guard claim.signedHeaders.contains(where: { $0 == "host" || $0 == ":authority" }) else {
            throw .invalid("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        }
        guard claim.algorithm == SigV4Canonical.algorithm else {
            throw .incomplete(
                "Unsupported AWS 'algorithm': '\(Self.echo(claim.algorithm))' (only AWS4-HMAC-SHA256 for now). "
            )
        }
        let scope = try self.checkScope(of: claim)
        guard let credentials = self.credentialsForAccessKeyID(scope.accessKeyID) else {
            throw .unknownAccessKey()
        }
        try self.checkSignature(of: request, claim: claim, scope: scope.text, credentials: credentials)
        if let expected = credentials.sessionToken {
            guard let presented = claim.sessionToken, SigV4Canonical.constantTimeEquals(presented, expected) else {
                throw .invalidSessionToken()
            }
        } else if claim.sessionToken != nil {
            throw .invalidSessionToken()
        }
        if let expiration = credentials.expiration, AmzTimestamp(expiration) <= now {
            throw .expiredSessionToken()
        }
        return VerifiedCaller(
            accessKeyID: scope.accessKeyID,
            region: scope.region,
            service: scope.service,
            signedAt: claim.timestamp.date
        )
    }

    private func claim(of request: SigV4Request) throws(SigV4VerificationError) -> Claim {
        let query = Self.authenticationParameters(in: request.query)
        let header = request.headerValue("Authorization")
        if header != nil && query["X-Amz-Algorithm"] != nil {
            throw .invalid("Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.")
        }
        if let header {
            return try Self.headerClaim(header, request: request)
        }
        if query["X-Amz-Algorithm"] != nil {
            return try Self.queryClaim(query)
        }
        throw .missingAuthenticationToken()
    }

    private static func headerClaim(_ header: String, request: SigV4Request) throws(SigV4VerificationError) -> Claim {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("AWS4-") else { throw .missingAuthenticationToken() }
        let algorithm = String(trimmed.prefix { $0 != " " })
        var parameters: [Substring: Substring] = [:]
        for token in trimmed.dropFirst(algorithm.count).split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\t" }) {
            guard let equals = token.firstIndex(of: "=") else { continue }
            let key = token[..<equals]
            if parameters[key] == nil { parameters[key] = token[token.index(after: equals)...] }
        }
        var missing = ""
        for name: Substring in ["Credential", "Signature", "SignedHeaders"] where (parameters[name] ?? "").isEmpty {
            missing += "Authorization header requires '\(name)' parameter. "
        }
        let dateText = request.headerValue("X-Amz-Date") ?? request.headerValue("Date")
        if dateText == nil {
            missing += "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        }
        guard missing.isEmpty, let dateText else { throw .incomplete(missing + "Authorization=" + Self.echo(header)) }
        let timestamp: AmzTimestamp?
        if request.headerValue("X-Amz-Date") != nil {
            timestamp = AmzTimestamp(basic: dateText.trimmingCharacters(in: .whitespaces))
        } else {
            let text = dateText.trimmingCharacters(in: .whitespaces)
            timestamp = AmzTimestamp(httpDate: text) ?? AmzTimestamp(basic: text)
        }
        guard let timestamp else { throw Self.badDate(dateText) }
        return Claim(
            algorithm: algorithm,
            credential: String(parameters["Credential"] ?? ""),
            signedHeaders: Self.signedHeaderNames(String(parameters["SignedHeaders"] ?? "")),
            signature: String(parameters["Signature"] ?? ""),
            timestamp: timestamp,
            sessionToken: request.headerValue("X-Amz-Security-Token"),
            expires: nil,
            isPresigned: false
        )
    }

    private static func queryClaim(_ query: [String: String]) throws(SigV4VerificationError) -> Claim {
        var missing = ""
        for name in ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date"]
        where (query[name] ?? "").isEmpty {
            missing += "AWS query-string parameters must include '\(name)'. "
        }
        guard missing.isEmpty else { throw .incomplete(missing + "Re-examine the query-string parameters.") }
        let dateText = query["X-Amz-Date"] ?? ""
        guard let timestamp = AmzTimestamp(basic: dateText) else { throw Self.badDate(dateText) }
        var expires: Int64?
        if let text = query["X-Amz-Expires"] {
            guard let seconds = Int64(text), seconds >= 0, seconds <= Self.maximumPresignedExpiry else {
                throw .incomplete(
                    "X-Amz-Expires must be a number of seconds from 0 to 604800 (one week). Got '\(Self.echo(text))'."
                )
            }
            expires = seconds
        }
        return Claim(
            algorithm: query["X-Amz-Algorithm"] ?? "",
            credential: query["X-Amz-Credential"] ?? "",
            signedHeaders: Self.signedHeaderNames(query["X-Amz-SignedHeaders"] ?? ""),
            signature: query["X-Amz-Signature"] ?? "",
            timestamp: timestamp,
            sessionToken: query["X-Amz-Security-Token"],
            expires: expires,
            isPresigned: true
        )
    }

    private func checkTime(of claim: Claim, now: AmzTimestamp) throws(SigV4VerificationError) {
        let skew = max(0, self.allowedClockSkew.components.seconds)
        let skewText = skew % 60 == 0 ? "\(skew / 60) min." : "\(skew) sec."
        if let expires = claim.expires {
            let earliest = now.adding(seconds: -expires)
            if claim.timestamp < earliest {
                throw .signatureExpired(
                    "Signature expired: \(claim.timestamp.basic) is now earlier than \(earliest.basic) "
                        + "(\(now.basic) - \(expires) sec.)"
                )
            }
        } else {
            let earliest = now.adding(seconds: -skew)
            if claim.timestamp < earliest {
                throw .signatureExpired(
                    "Signature expired: \(claim.timestamp.basic) is now earlier than \(earliest.basic) "
                        + "(\(now.basic) - \(skewText))"
                )
            }
        }
        let latest = now.adding(seconds: skew)
        if claim.timestamp > latest {
            throw .signatureExpired(
                "Signature not yet current: \(claim.timestamp.basic) is still later than \(latest.basic) "
                    + "(\(now.basic) + \(skewText))"
            )
        }
    }

    private struct Scope {
        var accessKeyID: String
        var region: String
        var service: String
        /// `date/region/service/aws4_request`, as signed.
        var text: String
    }

    private func checkScope(of claim: Claim) throws(SigV4VerificationError) -> Scope {
        var credential = Substring(claim.credential)
        while credential.hasSuffix("/") { credential = credential.dropLast() }
        let parts = credential.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5 else {
            throw .incomplete(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
                    + "got '\(Self.echo(claim.credential))'"
            )
        }
        var problems = ""
        if parts[2] != self.region {
            problems += "Credential should be scoped to a valid region, not '\(Self.echo(String(parts[2])))'. "
        }
        if !self.services.contains(String(parts[3])) {
            let expected = self.services.sorted().joined(separator: "' or '")
            problems += "Credential should be scoped to correct service: '\(expected)'. "
        }
        if parts[4] != SigV4Canonical.terminator {
            problems += "Credential should be scoped with a valid terminator: 'aws4_request', not "
                + "'\(Self.echo(String(parts[4])))'. "
        }
        if parts[1] != claim.timestamp.dateStamp {
            problems += "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                + "'\(Self.echo(String(parts[1])))' != '\(claim.timestamp.dateStamp)', from '\(claim.timestamp.basic)'."
        }
        guard problems.isEmpty else { throw .invalid(problems) }
        return Scope(
            accessKeyID: String(parts[0]),
            region: String(parts[2]),
            service: String(parts[3]),
            text: parts[1...].joined(separator: "/")
        )
    }

    private func checkSignature(
        of request: SigV4Request,
        claim: Claim,
        scope: String,
        credentials: AWSCredentials
    ) throws(SigV4VerificationError) {
        let headers = SigV4Canonical.headers(request.headers, signing: claim.signedHeaders)
        let canonicalRequest = SigV4Canonical.canonicalRequest(
            method: request.method,
            path: request.path,
            query: SigV4Canonical.query(request.query, excludingKey: claim.isPresigned ? "X-Amz-Signature" : nil),
            canonicalHeaders: headers.canonical,
            signedHeaders: headers.signed,
            payloadHash: Self.payloadHash(of: request)
        )
        let stringToSign = SigV4Canonical.stringToSign(
            timestamp: claim.timestamp.basic,
            scope: scope,
            canonicalRequest: canonicalRequest
        )
        let parts = scope.split(separator: "/")
        let expected = SigV4Canonical.signature(
            secretAccessKey: credentials.secretAccessKey,
            dateStamp: String(parts[0]),
            region: String(parts[1]),
            service: String(parts[2]),
            stringToSign: stringToSign
        )
        guard SigV4Canonical.constantTimeEquals(claim.signature, expected) else {
            var diagnostics = "The Canonical String for this request should have been\n'\(canonicalRequest)'\n\n"
                + "The String-to-Sign should have been\n'\(stringToSign)'\n"
            for token in [claim.sessionToken, credentials.sessionToken].compactMap({ $0 }) where !token.isEmpty {
                diagnostics = diagnostics.replacingOccurrences(of: token, with: "<redacted>")
                diagnostics = diagnostics.replacingOccurrences(
                    of: SigV4Canonical.percentEncode(token),
                    with: "<redacted>"
                )
            }
            throw .signatureDoesNotMatch(diagnostics: diagnostics)
        }
    }
}

// MARK: - Helpers

extension SigV4Verifier {
    /// The body hash to verify against. A client's `X-Amz-Content-Sha256` is trusted only to opt out of body
    /// signing (`UNSIGNED-PAYLOAD`); otherwise the hash of the body actually received is used, so a body that
    /// does not match the declared hash fails as a signature mismatch.
    private static func payloadHash(of request: SigV4Request) -> String {
        let declared = request.headerValue("X-Amz-Content-Sha256")?.trimmingCharacters(in: .whitespaces)
        if declared == SigV4Canonical.unsignedPayload { return SigV4Canonical.unsignedPayload }
        switch request.payload {
        case .bytes, .precomputedSHA256: return SigV4Signer.payloadHash(of: request.payload)
        case .unsigned: return declared ?? SigV4Canonical.unsignedPayload
        }
    }

    /// The decoded values of the `X-Amz-*` query parameters (first occurrence of each).
    private static func authenticationParameters(in query: String) -> [String: String] {
        var parameters: [String: String] = [:]
        guard query.contains("X-Amz-") || query.contains("x-amz-") else { return parameters }
        for component in query.split(separator: "&") {
            let pair = component.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(decoding: SigV4Canonical.percentDecode(pair[0].utf8), as: UTF8.self)
            guard key.hasPrefix("X-Amz-"), parameters[key] == nil else { continue }
            let value = pair.count > 1 ? SigV4Canonical.percentDecode(pair[1].utf8) : []
            parameters[key] = String(decoding: value, as: UTF8.self)
        }
        return parameters
    }

    private static func signedHeaderNames(_ list: String) -> [String] {
        list.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
    }

    private static func badDate(_ text: String) -> SigV4VerificationError {
        .incomplete(
            "Date must be in ISO-8601 'basic format'. Got '\(Self.echo(text))'. See http://en.wikipedia.org/wiki/ISO_8601"
        )
    }

    /// Client text quoted back in a message, bounded so a hostile header cannot inflate logs.
    private static func echo(_ text: String) -> String {
        text.count <= Self.maximumEcho ? text : String(text.prefix(Self.maximumEcho)) + "…"
    }
}
