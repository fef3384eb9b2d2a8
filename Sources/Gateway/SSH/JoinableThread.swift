import Relay

#if canImport(Glibc)
import Glibc
#endif

/// A plain POSIX thread that can be joined, with or without a deadline: libssh sessions block in
/// poll(2) on threads of their own, and shutdown must know when each one is gone.
final class JoinableThread: Sendable {
    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    private let thread: pthread_t
    /// Readable once the body has returned: lets `join(milliseconds:)` wait with a deadline
    /// (glibc's pthread_timedjoin_np is not visible to Swift).
    private let ended: WakeupFD

    /// Starts `body` on a new thread named `name` (at most 15 bytes are kept).
    init(name: String, _ body: @escaping @Sendable () -> Void) throws(SSHFrontError) {
        let ended: WakeupFD
        do { ended = try WakeupFD() } catch { throw SSHFrontError("\(error)") }
        let context = Unmanaged.passRetained(Body {
            body()
            ended.signal()
        }).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { raw in
            let body = Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue()
            body.run()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            throw SSHFrontError("cannot start a thread (\(name)): error \(status); the process may be at its thread limit")
        }
        self.thread = thread
        self.ended = ended
    }

    /// Waits for the thread to end.
    func join() {
        pthread_join(self.thread, nil)
    }

    /// Waits at most `milliseconds`; returns whether the thread ended (and was joined).
    func join(milliseconds: Int32) -> Bool {
        var descriptor = pollfd(fd: self.ended.descriptor, events: Int16(POLLIN), revents: 0)
        var ready: Int32
        repeat { ready = poll(&descriptor, 1, milliseconds) } while ready < 0 && errno == EINTR
        guard ready > 0 else { return false }
        pthread_join(self.thread, nil)
        return true
    }
}
