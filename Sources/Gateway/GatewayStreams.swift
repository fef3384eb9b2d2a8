import NIOCore

/// Which front a connection came in through; named in audit lines and metrics.
public enum FrontKind: String, Sendable, Codable, CaseIterable {
    case ssh
    case socks5
    case httpConnect = "http-connect"
    case forward
    case daemon
}

/// Who is asking: the authenticated user (or "anonymous" on an open TCP front) and where from.
public struct ClientIdentity: Sendable, Hashable {
    public var user: String
    /// SHA256:… fingerprint of the key that authenticated the user, as `ssh-keygen -l` prints it.
    public var keyFingerprint: String?
    public var sourceAddress: String
    public var front: FrontKind

    public init(user: String, keyFingerprint: String? = nil, sourceAddress: String, front: FrontKind) {
        self.user = user
        self.keyFingerprint = keyFingerprint
        self.sourceAddress = sourceAddress
        self.front = front
    }
}

/// One connection a front wants relayed: the host and port the client asked for, as typed.
public struct StreamRequest: Sendable {
    public var host: String
    public var port: Int
    public var identity: ClientIdentity

    public init(host: String, port: Int, identity: ClientIdentity) {
        self.host = host
        self.port = port
        self.identity = identity
    }
}

/// Why a stream could not be opened; `message` is shown to the client (ssh prints it, SOCKS maps
/// `kind` to a reply code), so it names the problem and what to do, and never holds a secret.
public struct StreamOpenError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// The access rules do not allow this user this target or port.
        case denied
        /// No instance, alias or route by that name.
        case unknownTarget = "unknown_target"
        /// A Name tag matches more than one instance.
        case ambiguousTarget = "ambiguous_target"
        /// The instance is known but its agent is not connected.
        case targetOffline = "target_offline"
        /// The session could not be started or the stream could not be opened.
        case sessionFailed = "session_failed"
        /// The gateway is stopping or at its limits.
        case unavailable
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { self.message }
}

/// The destination leg of one relayed connection: a smux stream on a pooled session, or a whole
/// session of its own (AWS-StartSSHSession, basic-mode agents).
///
/// Every call happens on `eventLoop`; so do the delegate's callbacks.
public protocol DestinationStream: AnyObject {
    var eventLoop: any EventLoop { get }
    /// Set once, right after the stream is handed out; held weakly (the front owns the stream).
    var delegate: (any DestinationStreamDelegate)? { get set }
    /// Queues bytes toward the destination; returns how many were taken. Fewer than offered means
    /// the stream's bounded buffer is full: keep the rest and wait for `destinationWritable`.
    func write(_ data: ByteBuffer) -> Int
    /// The front's EOF. The agent closes the destination on a FIN, so the stream stays open until
    /// the destination closes or the linger time passes (ARCHITECTURE.md, half-close).
    func finishWriting()
    /// The front is gone: close now, drop what is queued.
    func abort()
    /// The front can take bytes again after `destinationCanReceive` was false.
    func resumeReceiving()
    /// What the route resolved to, for audit lines: target id, document, session id.
    var routeDescription: RouteDescription { get }
}

public protocol DestinationStreamDelegate: AnyObject {
    /// Bytes from the destination, in order.
    func destinationReceived(_ data: ByteBuffer)
    /// Room again after a short `write`.
    func destinationWritable()
    /// The destination side is finished: nil error is an orderly close (after all data was delivered).
    func destinationClosed(error: String?)
    /// Whether the front can take more bytes now; false holds the destination back (backpressure).
    var destinationCanReceive: Bool { get }
}

/// What a stream resolved to, for the audit log.
public struct RouteDescription: Sendable, Hashable {
    public var target: String
    public var document: String
    public var sessionID: String

    public init(target: String, document: String, sessionID: String) {
        self.target = target
        self.document = document
        self.sessionID = sessionID
    }
}

/// What the fronts need from the gateway: opening streams, checking keys, and the help text.
public protocol GatewayServices: AnyObject, Sendable {
    /// Resolves, checks access and opens a destination stream bound to `eventLoop`.
    func openStream(_ request: StreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any DestinationStream>
    /// The user name a key authenticates as, or nil. `keyType` is the SSH name ("ssh-ed25519",
    /// "ecdsa-sha2-nistp256", "ssh-rsa"), `keyBase64` the public key blob as in authorized_keys.
    func authenticate(user: String, keyType: String, keyBase64: String) -> AuthenticatedUser?
    /// The text a plain `ssh gw` session shows: how to jump, and the targets this user may reach.
    func helpText(for identity: ClientIdentity) -> String
    /// Called by a front when a relayed connection ends, with its counters (audit and metrics).
    func streamFinished(_ record: StreamRecord)
}

public struct AuthenticatedUser: Sendable, Hashable {
    public var name: String
    public var keyFingerprint: String

    public init(name: String, keyFingerprint: String) {
        self.name = name
        self.keyFingerprint = keyFingerprint
    }
}

/// The counters of one finished connection.
public struct StreamRecord: Sendable {
    public var request: StreamRequest
    public var route: RouteDescription?
    public var bytesFromClient: Int
    public var bytesToClient: Int
    public var opened: NIODeadline
    public var closed: NIODeadline
    /// "ok", or the error kind / reason.
    public var outcome: String

    public init(request: StreamRequest, route: RouteDescription?, bytesFromClient: Int, bytesToClient: Int,
                opened: NIODeadline, closed: NIODeadline, outcome: String) {
        self.request = request
        self.route = route
        self.bytesFromClient = bytesFromClient
        self.bytesToClient = bytesToClient
        self.opened = opened
        self.closed = closed
        self.outcome = outcome
    }
}
