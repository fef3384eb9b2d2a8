import SSMProtocol

/// Why an smux session operation failed.
///
/// `protocolError` and `keepAliveTimeout` end the session: it remembers the error and every later
/// call reports the same one, as xtaci/smux does after a protocol error. The other codes only fail
/// the call that raised them.
public struct SmuxSessionError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable {
        /// The peer sent bytes that are not smux v1 (bad version, unknown command, bad length).
        case protocolError
        /// Keepalive is on and no frame arrived during a whole timeout window.
        case keepAliveTimeout
        /// The stream id counter wrapped; smux refuses further opens (`ErrGoAway`): start a new session.
        case streamIDsExhausted
        /// The configured maximum number of live streams is reached.
        case tooManyStreams
        /// A ``SmuxConfiguration`` value is out of range.
        case invalidConfiguration
    }

    /// Bounded: usable as a metric label.
    public let code: Code
    /// The decoder's error when `code` is `.protocolError`.
    public let protocolError: SmuxError?
    /// Diagnostics for logs.
    public let detail: String

    public var description: String { "\(self.code.rawValue): \(self.detail)" }

    /// Whether the session is unusable after this error.
    public var isFatal: Bool { self.code == .protocolError || self.code == .keepAliveTimeout }

    init(code: Code, protocolError: SmuxError? = nil, detail: String) {
        self.code = code
        self.protocolError = protocolError
        self.detail = detail
    }

    @inline(never)
    static func protocolError(_ error: SmuxError) -> Self {
        .init(code: .protocolError, protocolError: error, detail: error.description)
    }

    @inline(never)
    static func keepAliveTimeout(_ timeout: Int64) -> Self {
        .init(code: .keepAliveTimeout, detail: "no smux frame received for \(timeout / 1_000_000) ms")
    }

    @inline(never)
    static func streamIDsExhausted() -> Self {
        .init(code: .streamIDsExhausted, detail: "smux stream ids are exhausted; open a new session")
    }

    @inline(never)
    static func tooManyStreams(_ limit: Int) -> Self {
        .init(code: .tooManyStreams, detail: "this smux session already has its maximum of \(limit) streams")
    }

    @inline(never)
    static func invalidConfiguration(_ key: String, _ value: String, expected: String) -> Self {
        .init(code: .invalidConfiguration, detail: "smux \(key) is \(value); expected \(expected)")
    }
}
