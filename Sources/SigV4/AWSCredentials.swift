import Foundation

/// An access key pair, optionally temporary, that signs requests and that the emulator looks requests up
/// against.
///
/// Its printed forms (`description`, `debugDescription`, `Mirror`) show only the access key id, so
/// credentials can be logged, interpolated into errors or dumped in a debugger without leaking the secret
/// or the session token.
public struct AWSCredentials: Sendable, Hashable {
    /// The public half (`AKIA…` for long-term keys, `ASIA…` for temporary ones).
    public var accessKeyID: String
    public var secretAccessKey: String
    /// Present for temporary credentials (STS, SSO, instance roles); it must then travel with every request
    /// as `X-Amz-Security-Token`.
    public var sessionToken: String?
    /// When temporary credentials stop working; `nil` for long-term keys.
    public var expiration: Date?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil, expiration: Date? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.expiration = expiration
    }
}

extension AWSCredentials: CustomStringConvertible {
    public var description: String {
        var text = "AWSCredentials(accessKeyID: \(self.accessKeyID), secretAccessKey: <redacted>"
        if self.sessionToken != nil { text += ", sessionToken: <redacted>" }
        if let expiration = self.expiration { text += ", expiration: \(AmzTimestamp(expiration).basic)" }
        return text + ")"
    }
}

extension AWSCredentials: CustomDebugStringConvertible {
    public var debugDescription: String { self.description }
}

extension AWSCredentials: CustomReflectable {
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "accessKeyID": self.accessKeyID,
                "secretAccessKey": "<redacted>",
                "sessionToken": self.sessionToken == nil ? "nil" : "<redacted>",
                "expiration": self.expiration as Any,
            ],
            displayStyle: .struct
        )
    }
}
