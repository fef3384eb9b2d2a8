/// Why a data channel could not be opened or had to end. Descriptions say what happened and what
/// to do; none of them contains a token, a key or a StartSession response.
public enum DataChannelError: Error, Sendable, Hashable, CustomStringConvertible {
    case invalidStreamURL(String)
    /// The WebSocket could not be opened (connect, TLS or upgrade failed).
    case connectFailed(endpoint: String, reason: String)
    /// Every reconnect attempt after a drop failed.
    case reconnectFailed(attempts: Int, reason: String)
    /// ResumeSession returned no token: the service ended the session while we were away.
    case sessionTimedOut(sessionID: String)
    /// The agent stopped acknowledging what we send.
    case agentUnresponsive(seconds: Int)
    /// Messages from the agent were lost in transit and not resent in time.
    case lostMessagesNotResent(missing: Int, seconds: Int)
    /// The agent asked for something this client cannot do.
    case handshakeFailed(String)
    /// The session was closed by the service or the agent (`channel_closed`).
    case closedByService(output: String)
    /// Something on this machine failed (a terminal, a pipe, a listener).
    case local(String)
    case closed

    public var description: String {
        switch self {
        case .invalidStreamURL(let why):
            "Invalid StreamUrl in the StartSession response: \(why)."
        case .connectFailed(let endpoint, let reason):
            "Cannot open the data channel to \(endpoint): \(reason). Check network access to the Session Manager endpoint (ssmmessages) and any proxy."
        case .reconnectFailed(let attempts, let reason):
            "The data channel dropped and \(attempts) reconnect attempts failed (last: \(reason)). The session is lost; start a new one."
        case .sessionTimedOut(let sessionID):
            "Session \(sessionID) timed out: the service no longer resumes it (idle timeout or terminated)."
        case .agentUnresponsive(let seconds):
            "The agent acknowledged nothing for \(seconds) s; the session was ended. Check the SSM agent on the target."
        case .lostMessagesNotResent(let missing, let seconds):
            "\(missing) messages from the agent were lost in transit (a dropped WebSocket?) and not resent within \(seconds) s; the session was ended. Reconnect to get a new session."
        case .handshakeFailed(let why):
            "Session handshake failed: \(why)."
        case .closedByService(let output):
            output.isEmpty ? "The session was closed by the service." : "The session was closed by the service: \(output)"
        case .local(let why):
            why
        case .closed:
            "The data channel is closed."
        }
    }
}
