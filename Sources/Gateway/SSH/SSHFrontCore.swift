import CLibSSH
import Logging
import NIOCore
import Relay
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the accept thread, the session threads and the public ``SSHFront`` share: configuration,
/// services, counters and the registry of session threads (so shutdown can stop and join them).
final class SSHFrontCore: Sendable {
    struct SessionEntry: Sendable {
        var shared: SSHSessionShared
        var thread: JoinableThread?
    }

    let configuration: SSHFront.Configuration
    let services: any GatewayServices
    let group: any EventLoopGroup
    let logger: Logger
    let openSessions = Atomic<Int>(0)
    let openChannels = Atomic<Int>(0)
    private let sessions = Mutex<(next: Int, entries: [Int: SessionEntry], stopping: Bool)>((0, [:], false))

    init(configuration: SSHFront.Configuration, services: any GatewayServices, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.services = services
        self.group = group
        self.logger = logger
    }

    /// Runs on the accept thread until `stop` is signalled.
    func acceptLoop(listener: Int32, stop: WakeupFD, bind: LibSSHBind) {
        var fds = [
            pollfd(fd: listener, events: Int16(POLLIN), revents: 0),
            pollfd(fd: stop.descriptor, events: Int16(POLLIN), revents: 0),
        ]
        var backoff: Int32 = -1
        while true {
            let ready = poll(&fds, 2, backoff)
            if ready < 0 {
                if errno == EINTR { continue }
                self.logger.error("SSH accept loop stopped: poll(2) failed", metadata: ["errno": "\(errno)"])
                return
            }
            if fds[1].revents != 0 { return }
            // Out of descriptors: the listener stays readable, so poll again only after a pause
            // instead of spinning; accepting resumes once sessions end.
            backoff = self.acceptPending(listener: listener, bind: bind) ? -1 : 100
            fds[0].events = backoff < 0 ? Int16(POLLIN) : 0
        }
    }

    /// Accepts every queued connection; false when the process is out of descriptors.
    private func acceptPending(listener: Int32, bind: LibSSHBind) -> Bool {
        while true {
            var address = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listener, $0, &length) }
            }
            if fd < 0 {
                switch errno {
                case EINTR, ECONNABORTED: continue
                case EAGAIN, EWOULDBLOCK: return true
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    self.logger.warning("SSH front cannot accept: out of descriptors or memory", metadata: ["errno": "\(errno)"])
                    return false
                default:
                    self.logger.warning("SSH accept failed", metadata: ["errno": "\(errno)"])
                    return true
                }
            }
            // accept4(2) is not visible to Swift; the gateway spawns no children, so the window is harmless.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let peer = SocketAddressText.describe(address)
            if self.openSessions.load(ordering: .relaxed) >= self.configuration.maximumSessions {
                self.logger.warning("SSH session refused: at maximumSessions", metadata: ["ssh.peer": "\(peer)"])
                close(fd)
                continue
            }
            self.startSession(fd: fd, peer: peer, bind: bind)
        }
    }

    private func startSession(fd: Int32, peer: String, bind: LibSSHBind) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // libssh writes with blocking send(2): a client that stops reading must not hold the
        // session thread forever.
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard let session = ssh_new() else {
            close(fd)
            return
        }
        var processConfig = false
        ssh_options_set(session, SSH_OPTIONS_PROCESS_CONFIG, &processConfig)
        guard ssh_bind_accept_fd(bind.handle, session, fd) == SSH_OK else {
            self.logger.warning("SSH session setup failed", metadata: ["ssh.peer": "\(peer)", "error": "\(String(cString: ssh_get_error(UnsafeMutableRawPointer(bind.handle))))"])
            let owned = ssh_get_fd(session) == fd
            ssh_free(session)
            if !owned { close(fd) }
            return
        }
        let shared: SSHSessionShared
        do { shared = try SSHSessionShared(fd: fd, peer: peer) } catch {
            self.logger.warning("SSH session refused", metadata: ["ssh.peer": "\(peer)", "error": "\(error)"])
            ssh_free(session)
            return
        }
        let handle = LibSSHSessionHandle(pointer: session)
        self.openSessions.add(1, ordering: .relaxed)
        self.sessions.withLock { sessions in
            let id = sessions.next
            sessions.next += 1
            sessions.entries[id] = SessionEntry(shared: shared, thread: nil)
            do {
                sessions.entries[id]!.thread = try JoinableThread(name: "ssh-session") {
                    SSHSessionWorker(session: handle.pointer, shared: shared, core: self).run()
                    self.sessionEnded(id: id)
                }
            } catch {
                sessions.entries[id] = nil
                self.openSessions.subtract(1, ordering: .relaxed)
                ssh_free(session)
                self.logger.warning("SSH session refused", metadata: ["ssh.peer": "\(peer)", "error": "\(error)"])
            }
        }
    }

    /// On the session's own thread, last: a session nobody is waiting for detaches its thread.
    private func sessionEnded(id: Int) {
        self.openSessions.subtract(1, ordering: .relaxed)
        let detach = self.sessions.withLock { $0.entries.removeValue(forKey: id) != nil }
        if detach { pthread_detach(pthread_self()) }
    }

    /// Asks every session to disconnect, then joins the threads; a session stuck in a blocking
    /// write gets its socket shut down after a grace period.
    func stopAllSessions() {
        let entries = self.sessions.withLock { sessions in
            sessions.stopping = true
            let all = Array(sessions.entries.values)
            sessions.entries.removeAll()
            return all
        }
        for entry in entries { entry.shared.requestStop() }
        for entry in entries {
            guard let thread = entry.thread else { continue }
            if !thread.join(milliseconds: 5000) {
                entry.shared.shutdownSocket()
                thread.join()
            }
        }
    }
}

/// An `ssh_session` on its way from the accept thread to its own thread.
/// `@unchecked Sendable`: ownership moves with it; the accept thread never touches it after the handoff.
struct LibSSHSessionHandle: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// The libssh bind object: the host keys and algorithms every accepted session copies.
/// `@unchecked Sendable`: configured in `init`, then used only by the accept thread; freed after
/// that thread has been joined (the front drops its reference then, the thread's closure at exit).
final class LibSSHBind: @unchecked Sendable {
    let handle: OpaquePointer

    init(hostKeys: [OpaquePointer]) throws {
        guard let handle = ssh_bind_new() else {
            for key in hostKeys { ssh_key_free(key) }
            throw SSHFrontError("ssh_bind_new failed: out of memory")
        }
        self.handle = handle
        var processConfig = false
        ssh_bind_options_set(handle, SSH_BIND_OPTIONS_PROCESS_CONFIG, &processConfig)
        ssh_bind_options_set(handle, SSH_BIND_OPTIONS_BANNER, "ssmgate")
        // libssh's server default leaves out the HMAC-SHA1 MACs, which older clients of database
        // tools (JSch, libssh2) still need; HMAC-SHA1 remains sound as a MAC. OpenSSH picks a
        // SHA-2 MAC first either way.
        let macs = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha2-256,hmac-sha2-512,hmac-sha1-etm@openssh.com,hmac-sha1"
        ssh_bind_options_set(handle, SSH_BIND_OPTIONS_HMAC_C_S, macs)
        ssh_bind_options_set(handle, SSH_BIND_OPTIONS_HMAC_S_C, macs)
        var failure: String?
        for key in hostKeys {
            // The bind takes ownership of an imported key (ssh_bind_free frees it).
            if failure == nil, ssh_bind_options_set(handle, SSH_BIND_OPTIONS_IMPORT_KEY, UnsafeRawPointer(key)) != SSH_OK {
                failure = String(cString: ssh_get_error(UnsafeMutableRawPointer(handle)))
                ssh_key_free(key)
            } else if failure != nil {
                ssh_key_free(key)
            }
        }
        if let failure { throw SSHFrontError("cannot use the SSH host keys: \(failure)") }
    }

    deinit {
        ssh_bind_free(self.handle)
    }
}
