/// The agent's version as the official client compares it (reference 6.6): dotted integers, the
/// same number of components on both sides, strictly greater. Anything unparsable (or an empty
/// version, when the agent skipped the handshake) is "not supported", so old behaviour is chosen.
public struct AgentVersion: Hashable, Sendable, CustomStringConvertible {
    public let text: String

    public init(_ text: String) { self.text = text }

    public func isGreater(than other: String) -> Bool {
        let mine = self.text.split(separator: ".", omittingEmptySubsequences: false).map { Int($0) }
        let theirs = other.split(separator: ".", omittingEmptySubsequences: false).map { Int($0) }
        guard !self.text.isEmpty, mine.count == theirs.count, !mine.contains(nil), !theirs.contains(nil) else { return false }
        for (a, b) in zip(mine, theirs) where a! != b! { return a! > b! }
        return false
    }

    /// Mux port forwarding needs an agent after 3.0.196.0.
    public var supportsMux: Bool { self.isGreater(than: "3.0.196.0") }
    /// Agents after 2.3.722.0 take the in-band TerminateSession flag in basic port sessions.
    public var takesTerminateFlag: Bool { self.isGreater(than: "2.3.722.0") }

    public var description: String { self.text.isEmpty ? "(unknown)" : self.text }
}
