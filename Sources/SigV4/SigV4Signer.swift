import Foundation

/// Signs requests for one credential scope (credentials, region, service) the way botocore's `SigV4Auth`
/// does, byte for byte, so AWS and our emulator accept them exactly as they accept awscli's.
public struct SigV4Signer: Sendable {
    public let credentials: AWSCredentials
    public let region: String
    public let service: String
    /// Also send `X-Amz-Content-Sha256` with the payload hash (botocore does this only for S3). With
    /// ``SigV4Request/Payload/unsigned`` the header is always sent, as `UNSIGNED-PAYLOAD`.
    public let sendsContentSHA256: Bool

    public init(credentials: AWSCredentials, region: String, service: String, sendsContentSHA256: Bool = false) {
        self.credentials = credentials
        self.region = region
        self.service = service
        self.sendsContentSHA256 = sendsContentSHA256
    }

    /// Adds `X-Amz-Date` (or rewrites an existing `Date`), `X-Amz-Security-Token` for temporary credentials,
    /// `X-Amz-Content-Sha256` when asked for or when the payload is unsigned, and `Authorization`.
    ///
    /// Headers this method owns are replaced, not duplicated, so signing a retried request again is safe.
    /// Every header present, except hop-by-hop ones, `User-Agent` and `X-Amzn-Trace-Id`, is signed: add
    /// headers before signing, never after.
    /// - Parameter date: the signing time; truncated to the second.
    public func sign(_ request: inout SigV4Request, at date: Date) {
        let timestamp = AmzTimestamp(date)
        self.addHeaders(to: &request, timestamp: timestamp)
        let parts = self.signingParts(of: request, timestamp: timestamp)
        request.headers.append(
            (
                "Authorization",
                "\(SigV4Canonical.algorithm) Credential=\(self.credentials.accessKeyID)/\(parts.scope), "
                    + "SignedHeaders=\(parts.signedHeaders), Signature=\(parts.signature)"
            )
        )
    }
}

// MARK: - Steps, visible to tests

extension SigV4Signer {
    struct SigningParts {
        var canonicalRequest: String
        var stringToSign: String
        var scope: String
        var signedHeaders: String
        var signature: String
    }

    /// botocore `SigV4Auth._modify_request_before_signing`.
    func addHeaders(to request: inout SigV4Request, timestamp: AmzTimestamp) {
        request.removeHeaders("Authorization")
        if request.headerValue("Date") != nil {
            // botocore keeps a caller's `Date` header (rewritten to the signing time) instead of X-Amz-Date.
            request.replaceHeader("Date", with: timestamp.rfc2822)
            request.removeHeaders("X-Amz-Date")
        } else {
            request.replaceHeader("X-Amz-Date", with: timestamp.basic)
        }
        if let token = self.credentials.sessionToken {
            request.replaceHeader("X-Amz-Security-Token", with: token)
        }
        switch request.payload {
        case .unsigned:
            request.replaceHeader("X-Amz-Content-Sha256", with: SigV4Canonical.unsignedPayload)
        case .bytes, .precomputedSHA256:
            if self.sendsContentSHA256 {
                request.replaceHeader("X-Amz-Content-Sha256", with: Self.payloadHash(of: request.payload))
            }
        }
    }

    /// The canonical request, string to sign and signature of a request whose headers are already final.
    func signingParts(of request: SigV4Request, timestamp: AmzTimestamp) -> SigningParts {
        let names = SigV4Canonical.signableHeaderNames(request.headers)
        let headers = SigV4Canonical.headers(request.headers, signing: names)
        // botocore signs whatever X-Amz-Content-SHA256 says when the header is present.
        let payloadHash = request.headerValue("X-Amz-Content-Sha256") ?? Self.payloadHash(of: request.payload)
        let canonicalRequest = SigV4Canonical.canonicalRequest(
            method: request.method,
            path: request.path,
            query: SigV4Canonical.query(request.query),
            canonicalHeaders: headers.canonical,
            signedHeaders: headers.signed,
            payloadHash: payloadHash
        )
        let scope = SigV4Canonical.credentialScope(
            dateStamp: timestamp.dateStamp,
            region: self.region,
            service: self.service
        )
        let stringToSign = SigV4Canonical.stringToSign(
            timestamp: timestamp.basic,
            scope: scope,
            canonicalRequest: canonicalRequest
        )
        let signature = SigV4Canonical.signature(
            secretAccessKey: self.credentials.secretAccessKey,
            dateStamp: timestamp.dateStamp,
            region: self.region,
            service: self.service,
            stringToSign: stringToSign
        )
        return SigningParts(
            canonicalRequest: canonicalRequest,
            stringToSign: stringToSign,
            scope: scope,
            signedHeaders: headers.signed,
            signature: signature
        )
    }

    static func payloadHash(of payload: SigV4Request.Payload) -> String {
        switch payload {
        case .bytes(let body): body.isEmpty ? SigV4Canonical.emptyPayloadHash : SigV4Canonical.sha256Hex(body)
        case .precomputedSHA256(let hash): hash
        case .unsigned: SigV4Canonical.unsignedPayload
        }
    }
}
