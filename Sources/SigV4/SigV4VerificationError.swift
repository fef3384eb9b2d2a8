/// Why a request's signature was refused, carrying the code, message and status AWS itself answers with, so
/// the emulator's errors read (and make awscli/botocore behave) like the real service's.
///
/// Codes and messages are those of AWS JSON-protocol (Coral) services such as SSM and KMS, as captured by
/// the dynalite/kinesalite emulators and seen in awscli reports; ``response(for:)`` renders the EC2 Query
/// protocol equivalent. No text ever contains a secret access key or a session token.
public struct SigV4VerificationError: Error, Sendable, Hashable {
    /// The AWS error code (the JSON `__type` without its `com.amazon.coral.service#` prefix). Bounded, so
    /// usable as a metric label.
    public enum Code: String, Sendable, Hashable, CaseIterable {
        /// No `Authorization` header and no presigned query, or a non-SigV4 scheme.
        case missingAuthenticationToken = "MissingAuthenticationTokenException"
        /// A SigV4 authorization that is missing parts or is malformed.
        case incompleteSignature = "IncompleteSignatureException"
        /// A well-formed signature that does not verify: wrong secret, altered request, wrong scope, or a
        /// timestamp outside the allowed clock skew.
        case invalidSignature = "InvalidSignatureException"
        /// Unknown access key id, or a session token that does not belong to it.
        case unrecognizedClient = "UnrecognizedClientException"
        /// Temporary credentials past their expiration.
        case expiredToken = "ExpiredTokenException"
    }

    /// The wire protocol an error response is rendered for.
    public enum ResponseProtocol: Sendable, Hashable {
        /// `awsJson1_0`/`awsJson1_1` (SSM, KMS): `{"__type": code, "message": message}`.
        case awsJSON
        /// EC2's Query protocol: `<Response><Errors><Error><Code>…`.
        case ec2Query
    }

    /// What to put on the wire for a given protocol.
    public struct Response: Sendable, Hashable {
        public let code: String
        public let message: String
        public let httpStatus: Int
    }

    /// Finer than ``Code``: the EC2 rendering tells expired requests apart from bad signatures.
    enum Reason: Hashable {
        case missingAuthentication, malformed, signatureMismatch, signatureExpired, unknownAccessKey,
            invalidSessionToken, expiredSessionToken
    }

    public let code: Code
    /// The message AWS sends with ``code``.
    public let message: String
    /// The canonical request and string to sign the verifier computed, for logs when a signature does not
    /// match (AWS appends the same to its message). Session tokens are redacted.
    public let diagnostics: String?
    let reason: Reason

    init(_ code: Code, _ reason: Reason, _ message: String, diagnostics: String? = nil) {
        self.code = code
        self.reason = reason
        self.message = message
        self.diagnostics = diagnostics
    }

    /// The HTTP status for the JSON protocol: 400 for every one of these (SSM, KMS, DynamoDB; some newer
    /// services answer 403).
    public var httpStatus: Int { 400 }

    public func response(for protocol: ResponseProtocol) -> Response {
        switch `protocol` {
        case .awsJSON:
            return Response(code: self.code.rawValue, message: self.message, httpStatus: self.httpStatus)
        case .ec2Query:
            switch self.reason {
            case .missingAuthentication:
                return Response(
                    code: "MissingParameter",
                    message: "The request must contain the parameter AWSAccessKeyId",
                    httpStatus: 400
                )
            case .malformed:
                return Response(code: "IncompleteSignature", message: self.message, httpStatus: 400)
            case .signatureExpired, .expiredSessionToken:
                return Response(code: "RequestExpired", message: "Request has expired.", httpStatus: 400)
            case .signatureMismatch, .unknownAccessKey, .invalidSessionToken:
                return Response(
                    code: "AuthFailure",
                    message: "AWS was not able to validate the provided access credentials",
                    httpStatus: 401
                )
            }
        }
    }
}

// MARK: - Factories

extension SigV4VerificationError {
    @inline(never)
    static func missingAuthenticationToken() -> Self {
        Self(.missingAuthenticationToken, .missingAuthentication, "Request is missing Authentication Token")
    }

    @inline(never)
    static func incomplete(_ message: String) -> Self {
        Self(.incompleteSignature, .malformed, message)
    }

    /// A signature that cannot be right whatever the secret: both auth forms, unsigned `Host`, wrong scope.
    @inline(never)
    static func invalid(_ message: String) -> Self {
        Self(.invalidSignature, .signatureMismatch, message)
    }

    @inline(never)
    static func signatureDoesNotMatch(diagnostics: String) -> Self {
        Self(
            .invalidSignature,
            .signatureMismatch,
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
                + "Access Key and signing method. Consult the service documentation for details.",
            diagnostics: diagnostics
        )
    }

    @inline(never)
    static func signatureExpired(_ message: String) -> Self {
        Self(.invalidSignature, .signatureExpired, message)
    }

    @inline(never)
    static func unknownAccessKey() -> Self {
        Self(.unrecognizedClient, .unknownAccessKey, "The security token included in the request is invalid.")
    }

    /// AWS words this one without the final period (dynalite's capture of the token check).
    @inline(never)
    static func invalidSessionToken() -> Self {
        Self(.unrecognizedClient, .invalidSessionToken, "The security token included in the request is invalid")
    }

    @inline(never)
    static func expiredSessionToken() -> Self {
        Self(.expiredToken, .expiredSessionToken, "The security token included in the request is expired")
    }
}

extension SigV4VerificationError: CustomStringConvertible {
    public var description: String { "\(self.code.rawValue): \(self.message)" }
}
