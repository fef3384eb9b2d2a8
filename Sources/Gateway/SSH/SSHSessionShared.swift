import NIOCore
import Relay
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The part of a session that other threads touch: its wake-up pipe, the mailbox where event
/// loops leave the results of stream opens, and the stop request.
final class SSHSessionShared: Sendable {
    enum Event: Sendable {
        case opened(token: Int, relay: SSHChannelRelay)
        case failed(token: Int, error: StreamOpenError)
    }

    struct State {
        var events: [Event] = []
        var closed = false
        var socketClosed = false
    }

    let wakeup: WakeupFD
    let peer: String
    private let fd: Int32
    private let state = Mutex(State())
    private let stop = Atomic<Bool>(false)

    init(fd: Int32, peer: String) throws {
        self.wakeup = try WakeupFD()
        self.fd = fd
        self.peer = peer
    }

    /// From an event loop; false once the session has ended (the caller then cleans up itself).
    func post(_ event: Event) -> Bool {
        let posted = self.state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.events.append(event)
            return true
        }
        if posted { self.wakeup.signal() }
        return posted
    }

    /// On the session thread.
    func takeEvents() -> [Event] {
        self.state.withLock { state in
            guard !state.events.isEmpty else { return [] }
            let events = state.events
            state.events.removeAll(keepingCapacity: true)
            return events
        }
    }

    /// On the session thread as it ends: later posts are refused; returns what was still queued.
    func close() -> [Event] {
        self.state.withLock { state in
            state.closed = true
            let events = state.events
            state.events = []
            return events
        }
    }

    var stopRequested: Bool { self.stop.load(ordering: .acquiring) }

    func requestStop() {
        self.stop.store(true, ordering: .releasing)
        self.wakeup.signal()
    }

    /// On the session thread, just before libssh closes the socket: shutdownSocket must not touch
    /// a descriptor number that may be reused.
    func markSocketClosed() {
        self.state.withLock { $0.socketClosed = true }
    }

    /// From shutdown, for a session stuck in a blocking write: fails its I/O so the thread ends.
    func shutdownSocket() {
        self.state.withLock { state in
            if !state.socketClosed { _ = Glibc.shutdown(self.fd, Int32(SHUT_RDWR)) }
        }
    }
}
