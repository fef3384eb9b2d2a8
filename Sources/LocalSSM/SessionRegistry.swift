import Foundation
import SSMProtocol
import Synchronization

/// What the emulator knows about sessions: who started them, with which document, and which
/// tokens may open their data channels. Shared by the API, MGS and the admin endpoint.
public final class SessionRegistry: Sendable {
    public enum Status: String, Sendable {
        case connecting = "Connecting"
        case connected = "Connected"
        case terminated = "Terminated"
    }

    public struct Session: Sendable {
        public var id: String
        public var target: String
        public var documentName: String
        public var sessionType: String
        public var parameters: [String: String]
        public var properties: JSONValue
        public var owner: String
        public var reason: String?
        public var status: Status
        public var startDate: Date
        public var endDate: Date?
        /// Tokens the client may present in OpenDataChannel (the latest from Start/ResumeSession).
        var clientTokens: Set<String>
        /// The token the agent may present, from its latest CreateDataChannel.
        var agentTokens: Set<String>
        /// The SourceIdentity of the credentials that started the session (assumed roles only).
        public var sourceIdentity: String? = nil
        /// What `channel_closed` told the client when the session ended.
        var endOutput: String? = nil
    }

    private let state = Mutex<[String: Session]>([:])

    public init() {}

    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<4).map { _ in String(generator.next(), radix: 16).leftPadded(to: 16) }.joined()
    }

    static func sessionID(for user: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let suffix = String(generator.next() & 0x0FFF_FFFF_FFFF_FFFF, radix: 16).leftPadded(to: 17)
        return "\(user)-\(suffix)"
    }

    func create(_ session: Session) {
        self.state.withLock { $0[session.id] = session }
    }

    public func session(_ id: String) -> Session? {
        self.state.withLock { $0[id] }
    }

    public var sessions: [Session] {
        self.state.withLock { Array($0.values) }
    }

    func activeSessionCount(target: String) -> Int {
        self.state.withLock { sessions in sessions.values.filter { $0.target == target && $0.status != .terminated }.count }
    }

    /// A fresh client token for ResumeSession; nil when the session is unknown or over.
    func renewClientToken(_ id: String) -> String? {
        self.state.withLock { sessions in
            guard var session = sessions[id], session.status != .terminated else { return nil }
            let token = Self.randomToken()
            session.clientTokens = [token]
            sessions[id] = session
            return token
        }
    }

    func issueAgentToken(_ id: String) -> String? {
        self.state.withLock { sessions in
            guard var session = sessions[id], session.status != .terminated else { return nil }
            let token = Self.randomToken()
            session.agentTokens = [token]  // a reconnecting agent's old token is spent
            sessions[id] = session
            return token
        }
    }

    enum Role: Sendable { case client, agent }

    /// Checks a data-channel token; the answer says which side it belongs to.
    func role(ofToken token: String, session id: String) -> Role? {
        self.state.withLock { sessions in
            guard let session = sessions[id], session.status != .terminated else { return nil }
            if session.clientTokens.contains(token) { return .client }
            if session.agentTokens.contains(token) { return .agent }
            return nil
        }
    }

    /// The end of an ended session, for a client presenting one of its tokens; nil otherwise.
    func endOutput(ofEndedSession id: String, clientToken token: String) -> String? {
        self.state.withLock { sessions in
            guard let session = sessions[id], session.status == .terminated, session.clientTokens.contains(token) else { return nil }
            return session.endOutput ?? ""
        }
    }

    /// The first word on how a session ended wins (later closes of an ended session say nothing new).
    func recordEndOutput(_ id: String, _ output: String) {
        self.state.withLock { sessions in
            guard var session = sessions[id], session.endOutput == nil else { return }
            session.endOutput = output
            sessions[id] = session
        }
    }

    func markConnected(_ id: String) {
        self.state.withLock { sessions in
            if sessions[id]?.status == .connecting { sessions[id]?.status = .connected }
        }
    }

    /// Returns true when this call ended the session (false if it was already over or unknown).
    @discardableResult
    func terminate(_ id: String) -> Bool {
        self.state.withLock { sessions in
            guard var session = sessions[id], session.status != .terminated else { return false }
            session.status = .terminated
            session.endDate = Date()
            // The client's tokens stay known (never valid again: `role` refuses ended sessions) so a
            // client that connects just after the end is told why instead of losing its socket.
            session.agentTokens = []
            sessions[id] = session
            return true
        }
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        self.count >= width ? self : String(repeating: "0", count: width - self.count) + self
    }
}
