/// Where a session's data channel lives: the `StreamUrl` of StartSession, taken apart for dialing.
///
/// The official client dials the URL verbatim; so do we, so only the scheme, authority and
/// request target are extracted (no normalisation of the path or query).
public struct StreamEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var usesTLS: Bool
    public var host: String
    public var port: Int
    /// Path and query exactly as given, e.g. `/v1/data-channel/<id>?role=publish_subscribe`.
    public var requestTarget: String

    public init(usesTLS: Bool, host: String, port: Int, requestTarget: String) {
        self.usesTLS = usesTLS
        self.host = host
        self.port = port
        self.requestTarget = requestTarget
    }

    /// Parses a `ws://` or `wss://` URL; IPv6 hosts are written in brackets.
    public init(parsing url: String) throws(DataChannelError) {
        let usesTLS: Bool
        let rest: Substring
        if url.hasPrefix("wss://") {
            usesTLS = true
            rest = url.dropFirst(6)
        } else if url.hasPrefix("ws://") {
            usesTLS = false
            rest = url.dropFirst(5)
        } else {
            throw .invalidStreamURL("the stream URL must start with wss:// or ws://")
        }
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var target = String(rest[authorityEnd...])
        if target.isEmpty { target = "/" } else if target.first == "?" { target = "/" + target }
        guard !authority.isEmpty, !authority.contains("@") else {
            throw .invalidStreamURL("the stream URL has no host")
        }
        var host: Substring
        var portText: Substring?
        if authority.first == "[" {
            guard let close = authority.firstIndex(of: "]") else { throw .invalidStreamURL("unbalanced [ in the stream URL host") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.first == ":" { portText = after.dropFirst() } else if !after.isEmpty {
                throw .invalidStreamURL("unexpected text after the IPv6 host in the stream URL")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        let port: Int
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw .invalidStreamURL("the stream URL port is not a number between 1 and 65535")
            }
            port = value
        } else {
            port = usesTLS ? 443 : 80
        }
        self.init(usesTLS: usesTLS, host: String(host), port: port, requestTarget: target)
    }

    /// The value of the HTTP `Host` header for the upgrade request.
    public var hostHeader: String {
        let bracketed = self.host.contains(":") ? "[\(self.host)]" : self.host
        let defaultPort = self.usesTLS ? 443 : 80
        return self.port == defaultPort ? bracketed : "\(bracketed):\(self.port)"
    }

    /// Scheme, host and port only: the request target can carry session identifiers.
    public var description: String {
        "\(self.usesTLS ? "wss" : "ws")://\(self.hostHeader)"
    }
}
