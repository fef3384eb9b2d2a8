import CLibSSH
import Logging
import NIOCore
import Relay
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The gateway's SSH front: an SSH server (libssh) that users reach as a jump host
/// (`ssh -J user@gw target`, `scp -J`, `rsync -e 'ssh -J …'`, `sftp -J`). Each `direct-tcpip`
/// channel becomes a destination stream from ``GatewayServices``; a plain `ssh gw` shows the help
/// text.
///
/// libssh owns the SSH sockets: one accept thread polls the listener, and every session runs on a
/// thread of its own that blocks in `ssh_event_dopoll` and makes every libssh call for that
/// session. The NIO side is reached only through ``ByteRing``s and `EventLoop.execute`; NIO wakes a
/// session through its ``WakeupFD``.
public final class SSHFront: Sendable {
    public struct Configuration: Sendable {
        /// Address to listen on; loopback unless the gateway is meant to be reached from elsewhere.
        public var bindHost: String
        /// TCP port; 0 lets the system choose (``SSHFront/start()`` returns it).
        public var port: Int
        /// Where the Ed25519, ECDSA P-256 and RSA 3072 host keys live; created (0700, keys 0600) on
        /// first start and reused afterwards, so clients see the same host key across restarts.
        public var hostKeyDirectory: String
        /// Sessions beyond this are refused at accept: each one costs a thread.
        public var maximumSessions: Int
        /// Relayed channels per session beyond this are refused (resource shortage).
        public var maximumChannelsPerSession: Int
        /// Bytes buffered per direction per relayed channel; a full ring is the backpressure signal.
        public var ringCapacity: Int
        /// Time allowed for the key exchange and for authentication, each.
        public var handshakeTimeoutSeconds: Int

        public init(
            bindHost: String = "127.0.0.1", port: Int = 0, hostKeyDirectory: String, maximumSessions: Int = 256,
            maximumChannelsPerSession: Int = 64, ringCapacity: Int = 256 * 1024, handshakeTimeoutSeconds: Int = 30
        ) {
            self.bindHost = bindHost
            self.port = port
            self.hostKeyDirectory = hostKeyDirectory
            self.maximumSessions = maximumSessions
            self.maximumChannelsPerSession = maximumChannelsPerSession
            self.ringCapacity = ringCapacity
            self.handshakeTimeoutSeconds = handshakeTimeoutSeconds
        }
    }

    let core: SSHFrontCore
    private let state = Mutex(ListenerState())

    struct ListenerState {
        var listener: Int32 = -1
        var acceptThread: JoinableThread?
        var acceptStop: WakeupFD?
        var bind: LibSSHBind?
        var started = false
    }

    public init(
        configuration: Configuration, services: any GatewayServices, eventLoopGroup: any EventLoopGroup,
        logger: Logger = Logger(label: "ssmgate.ssh", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.core = SSHFrontCore(configuration: configuration, services: services, group: eventLoopGroup, logger: logger)
    }

    /// SSH sessions now open.
    public var openSessions: Int { self.core.openSessions.load(ordering: .relaxed) }
    /// Relayed (`direct-tcpip`) channels now open.
    public var openChannels: Int { self.core.openChannels.load(ordering: .relaxed) }

    /// Loads or creates the host keys, binds the listener and starts accepting; returns the bound port.
    public func start() throws -> Int {
        try self.state.withLock { state throws -> Int in
            guard !state.started else { throw SSHFrontError("the SSH front is already started") }
            let configuration = self.core.configuration
            guard configuration.ringCapacity >= 4096 else {
                throw SSHFrontError("ringCapacity is \(configuration.ringCapacity); expected at least 4096 bytes")
            }
            guard configuration.maximumSessions > 0 else {
                throw SSHFrontError("maximumSessions is \(configuration.maximumSessions); expected at least 1")
            }
            ssh_init()
            let keys = try SSHHostKeys.loadOrCreate(in: configuration.hostKeyDirectory)
            let bind = try LibSSHBind(hostKeys: keys)
            let (listener, port) = try Self.listen(host: configuration.bindHost, port: configuration.port)
            let stop: WakeupFD
            do { stop = try WakeupFD() } catch {
                close(listener)
                throw SSHFrontError("\(error)")
            }
            let core = self.core
            let thread: JoinableThread
            do {
                thread = try JoinableThread(name: "ssh-accept") {
                    core.acceptLoop(listener: listener, stop: stop, bind: bind)
                }
            } catch {
                close(listener)
                throw error
            }
            state.listener = listener
            state.acceptStop = stop
            state.acceptThread = thread
            state.bind = bind
            state.started = true
            core.logger.info("SSH front listening", metadata: ["ssh.bind": "\(configuration.bindHost):\(port)"])
            return port
        }
    }

    /// Closes the listener; sessions already open go on until they end.
    public func stopAccepting() {
        let (thread, stop) = self.state.withLock { state in
            let taken = (state.acceptThread, state.acceptStop)
            state.acceptThread = nil
            return taken
        }
        guard let thread, let stop else { return }
        stop.signal()
        thread.join()
        self.state.withLock { state in
            if state.listener >= 0 {
                close(state.listener)
                state.listener = -1
            }
            state.acceptStop = nil
            state.bind = nil
        }
    }

    /// Stops accepting, disconnects every session and joins their threads.
    public func shutdown() {
        self.stopAccepting()
        self.core.stopAllSessions()
    }

    deinit {
        self.shutdown()
    }
}

// MARK: - Listener

extension SSHFront {
    /// A non-blocking listening socket on `host:port` (numeric address or a name from getaddrinfo).
    static func listen(host: String, port: Int) throws -> (Int32, Int) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let info = result else {
            throw SSHFrontError("cannot resolve the SSH bind address '\(host)': \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SSHFrontError("socket(2) failed (errno \(errno))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let code = errno
            close(fd)
            throw SSHFrontError("cannot listen on \(host):\(port): \(String(cString: strerror(code)))")
        }
        guard Glibc.listen(fd, 128) == 0 else {
            let code = errno
            close(fd)
            throw SSHFrontError("listen(2) on \(host):\(port) failed: \(String(cString: strerror(code)))")
        }
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (fd, SocketAddressText.port(of: address))
    }
}

/// Renders peer addresses as "ip:port" (IPv6 in brackets), for identities and logs.
enum SocketAddressText {
    static func port(of address: sockaddr_storage) -> Int {
        var address = address
        let family = Int32(address.ss_family)
        return withUnsafePointer(to: &address) { pointer in
            switch family {
            case AF_INET:
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6:
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default:
                0
            }
        }
    }

    static func describe(_ address: sockaddr_storage) -> String {
        var address = address
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let port = self.port(of: address)
        let family = Int32(address.ss_family)
        return withUnsafePointer(to: &address) { pointer in
            switch family {
            case AF_INET:
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { inet in
                    var raw = inet.pointee.sin_addr
                    inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
                    return "\(text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }):\(port)"
                }
            case AF_INET6:
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { inet in
                    var raw = inet.pointee.sin6_addr
                    inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
                    return "[\(text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })]:\(port)"
                }
            default:
                "unknown"
            }
        }
    }
}

/// A problem starting or running the SSH front; the text says what and what to do.
public struct SSHFrontError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
