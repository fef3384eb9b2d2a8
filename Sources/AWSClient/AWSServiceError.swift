/// An error answer from an AWS service (or a transport failure talking to one), described so that a user
/// knows what to do: an access denial names the action and the target, `TargetNotConnected` explains what to
/// check on the instance, expired or unknown credentials say to refresh them.
///
/// - Important: The description is built from the code, the service's message and names we pass in (target,
///   region). Response bodies are never copied in, and known secrets (secret key, session token, session
///   tokens from responses) are scrubbed from the service message, so the error can be logged.
public struct AWSServiceError: Error, Sendable, CustomStringConvertible {
    /// The service, such as `ssm`, `ec2`, `kms`, `sts`, `sso`.
    public var service: String
    /// The API operation, such as `StartSession`.
    public var operation: String
    /// The AWS error code without its namespace (`AccessDeniedException`, `TargetNotConnected`), or
    /// `RequestFailed` for a transport error.
    public var code: String
    public var message: String
    /// 0 when no HTTP response arrived.
    public var httpStatus: Int
    public var requestID: String?
    /// What the call was about (an instance id, a role ARN), used to make the description actionable.
    public var resource: String?
    /// The region the call went to.
    public var region: String?
    /// How many attempts were made (retries included).
    public var attempts: Int = 1

    public init(
        service: String, operation: String, code: String, message: String, httpStatus: Int,
        requestID: String? = nil, resource: String? = nil, region: String? = nil
    ) {
        self.service = service
        self.operation = operation
        self.code = code
        self.message = message
        self.httpStatus = httpStatus
        self.requestID = requestID
        self.resource = resource
        self.region = region
    }
}

// MARK: - Classification

extension AWSServiceError {
    /// Codes that mean "slow down": retried with backoff (the SDKs' standard retry mode list).
    static let throttlingCodes: Set<String> = [
        "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
        "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
        "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
        "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
    ]
    static let transientCodes: Set<String> = [
        "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalServerError",
        "InternalFailure", "ServiceUnavailable", "RequestFailed",
    ]

    /// Whether the SDK's standard retry mode would try again: throttling, 5xx and transport failures, never
    /// other 4xx answers.
    public var isRetryable: Bool {
        if Self.throttlingCodes.contains(self.code) || Self.transientCodes.contains(self.code) { return true }
        return [500, 502, 503, 504].contains(self.httpStatus)
    }

    /// The credentials were rejected as expired or unknown: a fresh set may help.
    public var isCredentialProblem: Bool {
        Self.expiredCodes.contains(self.code) || Self.unrecognizedCodes.contains(self.code)
            || Self.signatureCodes.contains(self.code)
    }

    static let accessDeniedCodes: Set<String> = ["AccessDeniedException", "AccessDenied", "UnauthorizedOperation"]
    static let expiredCodes: Set<String> = ["ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"]
    static let unrecognizedCodes: Set<String> = [
        "UnrecognizedClientException", "InvalidClientTokenId", "AuthFailure", "UnauthorizedException",
    ]
    static let signatureCodes: Set<String> = ["InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature"]

    /// Returns a copy whose message has every non-empty `secret` replaced by `<redacted>`.
    func redacting(_ secrets: [String]) -> AWSServiceError {
        var copy = self
        for secret in secrets where secret.count >= 4 {
            copy.message = copy.message.replacingOccurrences(of: secret, with: "<redacted>")
            copy.resource = copy.resource?.replacingOccurrences(of: secret, with: "<redacted>")
        }
        return copy
    }
}

// MARK: - Description

extension AWSServiceError {
    public var description: String {
        let call = "\(self.service):\(self.operation)"
        let subject = self.resource.map { " on \($0)" } ?? ""
        let inRegion = self.region.map { " in \($0)" } ?? ""
        let said = self.message.isEmpty ? "" : " (AWS said: \(self.message))"
        let request = self.requestID.map { " [request id \($0)]" } ?? ""
        let advice: String
        switch self.code {
        case _ where Self.accessDeniedCodes.contains(self.code):
            advice = "Access denied: the caller is not allowed to perform \(call)\(subject)\(said). "
                + "Grant \(call) on \(self.resource ?? "the resource") in the caller's IAM policy (and check SCPs, "
                + "permission boundaries and session policies), or use a profile that has it."
        case "TargetNotConnected":
            let target = self.resource ?? "the target"
            advice = "The SSM agent on \(target) is offline or not connected to Session Manager\(inRegion)\(said). "
                + "Check that the instance is running, that the SSM agent is installed and running on it, that it can "
                + "reach the ssm, ssmmessages and ec2messages endpoints (internet, NAT or VPC endpoints), that its "
                + "instance profile allows Systems Manager (AmazonSSMManagedInstanceCore), and that the region and "
                + "account are the right ones; `ssmgate ls` shows its PingStatus."
        case "InvalidInstanceId", "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed":
            let target = self.resource ?? "the instance"
            advice = "\(target) is not a known managed instance\(inRegion)\(said). Check the instance id, the region "
                + "and the account (profile), and that the instance is registered with Systems Manager."
        case _ where Self.expiredCodes.contains(self.code):
            advice = "The AWS credentials have expired (\(self.code) from \(call)\(inRegion)). Refresh them "
                + "(for example `aws sso login`, a new session token, or re-run the credential process) and retry."
        case _ where Self.unrecognizedCodes.contains(self.code):
            advice = "AWS does not recognize the access key used for \(call)\(inRegion)\(said) (\(self.code)). "
                + "Refresh the credentials or select another profile; check that the key is active and belongs to "
                + "this partition/endpoint."
        case _ where Self.signatureCodes.contains(self.code):
            advice = "AWS rejected the request signature for \(call)\(inRegion)\(said) (\(self.code)). "
                + "The secret access key does not match the access key id, or the clock is off: refresh the "
                + "credentials and check the system time."
        case _ where Self.throttlingCodes.contains(self.code):
            advice = "\(call) was throttled\(inRegion) after \(self.attempts) attempt(s)\(said) (\(self.code)). "
                + "Wait and retry, or lower the request rate."
        case "RequestFailed":
            advice = "\(call) could not reach AWS\(inRegion) after \(self.attempts) attempt(s): \(self.message). "
                + "Check the network, proxy and endpoint URL."
        case "InvalidDocument":
            advice = "The Session Manager document does not exist or is not usable\(inRegion)\(said)."
        case "DoesNotExistException":
            advice = "\(call): \(self.resource ?? "the item") does not exist\(inRegion)\(said)."
        default:
            advice = "\(call)\(subject) failed\(inRegion) with \(self.code) (HTTP \(self.httpStatus))\(said)."
        }
        return advice + request
    }
}
