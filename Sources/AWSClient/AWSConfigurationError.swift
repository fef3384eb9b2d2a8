/// A problem with how AWS access is set up (profiles, files, credential sources, region) that the user fixes
/// by hand: the description says what is wrong, where (profile, file, key) and what to do.
///
/// - Important: Built only from names, paths and public values; secrets and tokens never go into it.
public struct AWSConfigurationError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, naming the profile, file or key involved.
    public var problem: String
    /// What to do about it.
    public var remedy: String
    /// Set for the one error an instance-metadata region lookup can repair.
    var isMissingRegion = false

    public init(problem: String, remedy: String) {
        self.problem = problem
        self.remedy = remedy
    }

    public var description: String { "\(self.problem); \(self.remedy)." }

    static func missingRegion(_ problem: String, remedy: String) -> AWSConfigurationError {
        var error = AWSConfigurationError(problem: problem, remedy: remedy)
        error.isMissingRegion = true
        return error
    }
}

/// A credential source that was configured but failed to produce credentials (STS refused, the SSO token
/// expired, the process exited non-zero…).
///
/// Separate from ``AWSConfigurationError`` because the chain must stop here rather than try the next
/// source: a configured source that fails is an answer, as in botocore.
public struct AWSCredentialsError: Error, Sendable, CustomStringConvertible {
    /// The source, such as `assume-role (profile dev)` or `sso (profile dev)`.
    public var source: String
    public var problem: String
    public var remedy: String
    /// The service error that caused it, when there was one.
    public var underlying: AWSServiceError?

    public init(source: String, problem: String, remedy: String, underlying: AWSServiceError? = nil) {
        self.source = source
        self.problem = problem
        self.remedy = remedy
        self.underlying = underlying
    }

    public var description: String {
        var text = "Could not get AWS credentials from \(self.source): \(self.problem)"
        if let underlying = self.underlying { text += " (\(underlying))" }
        return text + "; \(self.remedy)."
    }
}
