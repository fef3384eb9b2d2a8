import CLibSSH
import Logging
import NIOCore
import Relay

#if canImport(Glibc)
import Glibc
#endif

/// One SSH session, run on its own thread: the key exchange, public-key authentication, and its
/// channels. Every libssh call for the session happens here; the thread blocks only in
/// `ssh_event_dopoll`, on the session socket and the session's ``WakeupFD``.
///
/// libssh runs in its queued-message mode (no server callbacks), so a `direct-tcpip` open stays
/// an `ssh_message` until the destination answers: the reply (confirmation, or a failure that
/// carries the gateway's reason) is sent from this thread later, while other channels go on.
final class SSHSessionWorker {
    /// Also the key of the layout check in `ssmgate_reply_open_failure` (see shim.h).
    static let disconnectMessage = "ssmgate: session closed"
    static let scratchSize = 64 * 1024

    struct PendingOpen {
        let message: OpaquePointer
        let request: StreamRequest
        let opened: NIODeadline
    }

    let session: OpaquePointer
    let shared: SSHSessionShared
    let core: SSHFrontCore
    var logger: Logger
    private var event: OpaquePointer?
    private var identity: ClientIdentity?
    private var authFailures = 0
    private var closing = false
    private var relayed: [SSHRelayedChannel] = []
    private var helpChannels: [SSHHelpChannel] = []
    private var pendingOpens: [Int: PendingOpen] = [:]
    private var nextToken = 0
    private var warnedLayout = false
    /// The one buffer this session copies through between libssh and the rings.
    private let scratch: UnsafeMutableRawBufferPointer

    init(session: OpaquePointer, shared: SSHSessionShared, core: SSHFrontCore) {
        self.session = session
        self.shared = shared
        self.core = core
        self.logger = core.logger
        self.logger[metadataKey: "ssh.peer"] = "\(shared.peer)"
        self.scratch = .allocate(byteCount: Self.scratchSize, alignment: 16)
    }

    deinit {
        self.scratch.deallocate()
    }

    func run() {
        defer { self.cleanup() }
        ssh_set_blocking(self.session, 0)
        ssh_set_auth_methods(self.session, Self.publicKeyMethod)
        ssh_session_set_disconnect_message(self.session, Self.disconnectMessage)
        guard let event = ssh_event_new() else { return }
        self.event = event
        // The first step sends our banner and creates the session's poll context, which
        // ssh_event_add_session needs (it moves the session's handles into the event).
        let first = ssh_handle_key_exchange(self.session)
        guard first == SSH_OK || first == SSH_AGAIN else {
            self.logger.debug("SSH key exchange failed", metadata: ["error": "\(self.lastError)"])
            return
        }
        guard ssh_event_add_session(event, self.session) == SSH_OK,
            ssh_event_add_fd(event, self.shared.wakeup.descriptor, Int16(POLLIN), { _, _, _ in 0 }, nil) == SSH_OK
        else {
            self.logger.warning("SSH session setup failed: libssh could not poll the session")
            return
        }
        guard first == SSH_OK || self.keyExchange(event) else { return }
        self.mainLoop(event)
    }

    private func keyExchange(_ event: OpaquePointer) -> Bool {
        let deadline = NIODeadline.now() + .seconds(Int64(self.core.configuration.handshakeTimeoutSeconds))
        while true {
            guard !self.shared.stopRequested, let timeout = Self.milliseconds(until: deadline) else {
                self.logger.debug("SSH key exchange did not finish in time")
                return false
            }
            self.shared.wakeup.drain()
            _ = ssh_event_dopoll(event, timeout)
            let rc = ssh_handle_key_exchange(self.session)
            if rc == SSH_OK { return true }
            guard rc == SSH_AGAIN else {
                self.logger.debug("SSH key exchange failed", metadata: ["error": "\(self.lastError)"])
                return false
            }
        }
    }

    private func mainLoop(_ event: OpaquePointer) {
        let authDeadline = NIODeadline.now() + .seconds(Int64(self.core.configuration.handshakeTimeoutSeconds))
        var pollErrors = 0
        while true {
            self.shared.wakeup.drain()
            if self.shared.stopRequested { break }
            self.handleEvents()
            self.handleMessages()
            self.serviceChannels()
            if self.closing || self.sessionGone { break }
            var timeout: Int32 = -1
            if self.identity == nil {
                guard let remaining = Self.milliseconds(until: authDeadline) else {
                    self.logger.debug("SSH authentication did not finish in time")
                    break
                }
                timeout = remaining
            }
            if ssh_event_dopoll(event, timeout) == SSH_ERROR {
                if self.sessionGone { break }
                // poll(2) itself failed (not the session): give up rather than spin.
                pollErrors += 1
                if pollErrors > 100 { break }
            } else {
                pollErrors = 0
            }
        }
    }

    private var sessionGone: Bool {
        let status = ssh_get_status(self.session)
        return status & (SSH_CLOSED | SSH_CLOSED_ERROR) != 0 || ssh_is_connected(self.session) == 0
    }

    private var lastError: String {
        String(cString: ssh_get_error(UnsafeMutableRawPointer(self.session)))
    }

    static func milliseconds(until deadline: NIODeadline) -> Int32? {
        let remaining = (deadline - .now()).nanoseconds / 1_000_000
        guard remaining > 0 else { return nil }
        return Int32(clamping: remaining)
    }

    // MARK: - Messages

    /// The only method offered: public keys.
    private static let publicKeyMethod = Int32(SSH_AUTH_METHOD_PUBLICKEY)
    private static let requestAuth = Int32(bitPattern: SSH_REQUEST_AUTH.rawValue)
    private static let requestChannelOpen = Int32(bitPattern: SSH_REQUEST_CHANNEL_OPEN.rawValue)
    private static let requestChannel = Int32(bitPattern: SSH_REQUEST_CHANNEL.rawValue)
    private static let requestGlobal = Int32(bitPattern: SSH_REQUEST_GLOBAL.rawValue)

    private func handleMessages() {
        while !self.closing, let message = ssh_message_get(self.session) {
            switch ssh_message_type(message) {
            case Self.requestAuth:
                self.handleAuth(message)
                ssh_message_free(message)
            case Self.requestChannelOpen:
                self.handleChannelOpen(message)  // frees it, now or when the destination answers
            case Self.requestChannel:
                self.handleChannelRequest(message)
                ssh_message_free(message)
            case Self.requestGlobal:
                // tcpip-forward (ssh -R) and the like: refused; OpenSSH reports "remote port forwarding failed".
                self.logger.debug("SSH global request refused", metadata: ["ssh.request": "\(ssh_message_subtype(message))"])
                ssh_message_reply_default(message)
                ssh_message_free(message)
            default:
                ssh_message_reply_default(message)  // the ssh-userauth service request: accepted
                ssh_message_free(message)
            }
        }
    }

    private func handleAuth(_ message: OpaquePointer) {
        if self.identity == nil, ssh_message_subtype(message) == Self.publicKeyMethod,
            let key = ssmgate_message_auth_pubkey(message), let userName = ssh_message_auth_user(message)
        {
            let user = String(cString: userName)
            let state = ssmgate_message_auth_publickey_state(message)
            if let accepted = self.authenticate(user: user, key: key) {
                if state == Int32(SSH_PUBLICKEY_STATE_NONE.rawValue) {
                    ssh_message_auth_reply_pk_ok_simple(message)  // a probe: "this key would do"
                    return
                }
                if state == Int32(SSH_PUBLICKEY_STATE_VALID.rawValue) {
                    ssh_message_auth_reply_success(message, 0)
                    self.identity = ClientIdentity(
                        user: accepted.name, keyFingerprint: accepted.keyFingerprint, sourceAddress: self.shared.peer, front: .ssh)
                    self.logger[metadataKey: "ssh.user"] = "\(accepted.name)"
                    self.logger.debug("SSH user authenticated", metadata: ["ssh.key": "\(accepted.keyFingerprint)"])
                    return
                }
            }
        }
        self.authFailures += 1
        ssh_message_auth_set_methods(message, Self.publicKeyMethod)
        ssh_message_reply_default(message)
        if self.authFailures >= 32 {
            self.logger.debug("SSH session closed: too many authentication attempts")
            self.closing = true
        }
    }

    private func authenticate(user: String, key: OpaquePointer) -> AuthenticatedUser? {
        guard let typeName = ssh_key_type_to_char(ssh_key_type(key)) else { return nil }
        var encoded: UnsafeMutablePointer<CChar>?
        guard ssh_pki_export_pubkey_base64(key, &encoded) == SSH_OK, let encoded else { return nil }
        defer { ssh_string_free_char(encoded) }
        return self.core.services.authenticate(user: user, keyType: String(cString: typeName), keyBase64: String(cString: encoded))
    }

    private func handleChannelOpen(_ message: OpaquePointer) {
        guard let identity = self.identity else {
            ssh_message_reply_default(message)
            ssh_message_free(message)
            return
        }
        switch UInt32(bitPattern: ssh_message_subtype(message)) {
        case SSH_CHANNEL_SESSION.rawValue:
            if let channel = ssh_message_channel_request_open_reply_accept(message) {
                self.helpChannels.append(SSHHelpChannel(channel: channel))
            }
            ssh_message_free(message)
        case SSH_CHANNEL_DIRECT_TCPIP.rawValue:
            let host = ssh_message_channel_request_open_destination(message).map { String(cString: $0) } ?? ""
            let port = Int(ssh_message_channel_request_open_destination_port(message))
            let request = StreamRequest(host: host, port: port, identity: identity)
            guard self.relayed.count + self.pendingOpens.count < self.core.configuration.maximumChannelsPerSession else {
                self.refuseOpen(message, reason: SSHOpenFailure.resourceShortage,
                    "this SSH session already relays \(self.core.configuration.maximumChannelsPerSession) connections; open another session")
                ssh_message_free(message)
                return
            }
            self.startOpen(message, request: request)
        default:
            self.refuseOpen(message, reason: SSHOpenFailure.unknownChannelType,
                "ssmgate relays only direct-tcpip channels (ssh -J, -W, -L); this channel type is not supported")
            ssh_message_free(message)
        }
    }

    /// Asks the services for the destination on an event loop; the answer comes back through the
    /// mailbox, so this thread goes on serving the session's other channels meanwhile.
    private func startOpen(_ message: OpaquePointer, request: StreamRequest) {
        let token = self.nextToken
        self.nextToken += 1
        self.pendingOpens[token] = PendingOpen(message: message, request: request, opened: .now())
        self.logger.debug("SSH direct-tcpip requested", metadata: ["target.host": "\(request.host)", "target.port": "\(request.port)"])
        let loop = self.core.group.next()
        let services = self.core.services
        let shared = self.shared
        let capacity = self.core.configuration.ringCapacity
        loop.execute {
            services.openStream(request, on: loop).whenComplete { result in
                switch result {
                case .success(let stream):
                    // GatewayServices binds the stream to `loop`, where this callback runs.
                    stream.eventLoop.preconditionInEventLoop()
                    let relay = SSHChannelRelay(stream: stream, ringCapacity: capacity, sessionWakeup: shared.wakeup)
                    if !shared.post(.opened(token: token, relay: relay)) { relay.release() }
                case .failure(let error):
                    let openError = error as? StreamOpenError
                        ?? StreamOpenError(.sessionFailed, "cannot open \(request.host):\(request.port): \(error)")
                    _ = shared.post(.failed(token: token, error: openError))
                }
            }
        }
    }

    private func handleEvents() {
        for event in self.shared.takeEvents() {
            switch event {
            case .opened(let token, let relay):
                guard let pending = self.pendingOpens.removeValue(forKey: token) else {
                    relay.release()
                    continue
                }
                defer { ssh_message_free(pending.message) }
                guard let channel = ssh_channel_new(self.session) else {
                    relay.release()
                    self.finishedWithoutChannel(pending, outcome: "session_failed", route: relay.route)
                    continue
                }
                guard ssh_message_channel_request_open_reply_accept_channel(pending.message, channel) == SSH_OK else {
                    ssh_channel_free(channel)
                    relay.release()
                    self.finishedWithoutChannel(pending, outcome: "session_closed", route: relay.route)
                    continue
                }
                let relayed = SSHRelayedChannel(
                    channel: channel, relay: relay, request: pending.request, opened: pending.opened, core: self.core)
                self.relayed.append(relayed)
                self.core.openChannels.add(1, ordering: .relaxed)
                relay.wakeEventLoop()  // bytes the destination already sent are waiting
            case .failed(let token, let error):
                guard let pending = self.pendingOpens.removeValue(forKey: token) else { continue }
                self.logger.debug("SSH direct-tcpip refused", metadata: ["target.host": "\(pending.request.host)", "reason": "\(error.kind.rawValue)"])
                self.refuseOpen(pending.message, reason: SSHOpenFailure.reason(for: error.kind), error.message)
                ssh_message_free(pending.message)
                self.finishedWithoutChannel(pending, outcome: error.kind.rawValue, route: nil)
            }
        }
    }

    private func finishedWithoutChannel(_ pending: PendingOpen, outcome: String, route: RouteDescription?) {
        self.core.services.streamFinished(StreamRecord(
            request: pending.request, route: route, bytesFromClient: 0, bytesToClient: 0,
            opened: pending.opened, closed: .now(), outcome: outcome))
    }

    /// SSH_MSG_CHANNEL_OPEN_FAILURE with our reason and description (the client prints both).
    private func refuseOpen(_ message: OpaquePointer, reason: UInt32, _ description: String) {
        if ssmgate_reply_open_failure(self.session, message, Self.disconnectMessage, reason, description) != 0 {
            if !self.warnedLayout {
                self.warnedLayout = true
                self.logger.warning("this libssh does not match the 0.10 layout ssmgate expects: refused channels reach the client without a reason")
            }
            ssh_message_reply_default(message)
        }
    }

    private func handleChannelRequest(_ message: OpaquePointer) {
        guard let channel = ssh_message_channel_request_channel(message),
            let help = self.helpChannels.first(where: { $0.channel == channel }), let identity = self.identity
        else {
            ssh_message_reply_default(message)
            return
        }
        switch UInt32(bitPattern: ssh_message_subtype(message)) {
        case SSH_CHANNEL_REQUEST_PTY.rawValue, SSH_CHANNEL_REQUEST_ENV.rawValue, SSH_CHANNEL_REQUEST_WINDOW_CHANGE.rawValue:
            ssh_message_channel_request_reply_success(message)
        case SSH_CHANNEL_REQUEST_SHELL.rawValue, SSH_CHANNEL_REQUEST_EXEC.rawValue:
            ssh_message_channel_request_reply_success(message)
            if help.text == nil { help.text = Array(self.core.services.helpText(for: identity).utf8) }
        default:
            ssh_message_reply_default(message)  // subsystems (sftp), x11, agent forwarding: refused
        }
    }

    // MARK: - Channels

    private func serviceChannels() {
        if !self.relayed.isEmpty {
            var index = 0
            while index < self.relayed.count {
                if self.relayed[index].service(scratch: self.scratch) {
                    self.relayed.remove(at: index)
                } else {
                    index += 1
                }
            }
        }
        if !self.helpChannels.isEmpty {
            self.helpChannels.removeAll { $0.service() }
        }
    }

    private func cleanup() {
        let outcome = self.shared.stopRequested ? "gateway_stopping" : "session_closed"
        for event in self.shared.close() {
            if case .opened(_, let relay) = event { relay.release() }
        }
        for pending in self.pendingOpens.values {
            ssh_message_free(pending.message)
            self.finishedWithoutChannel(pending, outcome: outcome, route: nil)
        }
        self.pendingOpens.removeAll()
        for channel in self.relayed { channel.finish(outcome: outcome) }
        self.relayed.removeAll()
        self.helpChannels.removeAll()
        if let event = self.event {
            ssh_event_remove_fd(event, self.shared.wakeup.descriptor)
            ssh_event_remove_session(event, self.session)
            ssh_event_free(event)
            self.event = nil
        }
        self.shared.markSocketClosed()
        if !self.sessionGone {
            if self.shared.stopRequested { ssh_session_set_disconnect_message(self.session, "ssmgate: the gateway is shutting down") }
            ssh_disconnect(self.session)
        }
        ssh_free(self.session)
        self.logger.debug("SSH session ended")
    }
}

@available(*, unavailable)
extension SSHSessionWorker: Sendable {}

/// RFC 4254 § 5.1 reason codes, and how a ``StreamOpenError`` maps onto them.
enum SSHOpenFailure {
    static let administrativelyProhibited: UInt32 = 1
    static let connectFailed: UInt32 = 2
    static let unknownChannelType: UInt32 = 3
    static let resourceShortage: UInt32 = 4

    static func reason(for kind: StreamOpenError.Kind) -> UInt32 {
        switch kind {
        case .denied: self.administrativelyProhibited
        case .unknownTarget, .ambiguousTarget, .targetOffline, .sessionFailed: self.connectFailed
        case .unavailable: self.resourceShortage
        }
    }
}
