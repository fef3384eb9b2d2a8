#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A non-blocking self-pipe that an event loop signals to wake a thread blocked in poll(2) (a
/// libssh session loop), so that thread never has to spin or sleep to notice new bytes in its rings.
public final class WakeupFD: Sendable {
    /// Poll this for readability.
    public let descriptor: Int32
    let writeDescriptor: Int32

    public init() throws(WakeupError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw WakeupError(errno: errno) }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        self.descriptor = fds[0]
        self.writeDescriptor = fds[1]
    }

    /// Makes the descriptor readable; cheap and safe from any thread. A full pipe already wakes.
    public func signal() {
        var one: UInt8 = 1
        _ = withUnsafeBytes(of: &one) { write(self.writeDescriptor, $0.baseAddress, 1) }
    }

    /// Clears the readable state; call on the woken thread before looking at the rings.
    public func drain() {
        var scratch = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &scratch, { read(self.descriptor, $0.baseAddress, $0.count) }) > 0 {}
    }

    deinit {
        close(self.descriptor)
        close(self.writeDescriptor)
    }
}

public struct WakeupError: Error, CustomStringConvertible {
    public let errno: Int32
    public var description: String { "pipe(2) failed (errno \(self.errno)): the process may be out of file descriptors" }
}
