import Dispatch
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// NIO's pipe channels take pipes, sockets and terminals, not regular files or /dev/null. For
/// those (`ssmgate shell … < script.txt > out.log`) a thread copies between the descriptor and
/// a pipe that NIO can take; pipes and terminals are passed through untouched.
public enum StandardStreams {
    static let copies = DispatchGroup()

    /// Waits until copies into files are finished, so the process does not exit with output unwritten.
    public static func finishCopies(timeout: Double = 5) {
        _ = self.copies.wait(timeout: .now() + timeout)
    }

    static func usable(_ descriptor: CInt) -> Bool {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { return false }
        let kind = info.st_mode & S_IFMT
        return kind == S_IFIFO || kind == S_IFSOCK || isatty(descriptor) != 0
    }

    /// A descriptor NIO can read from: `descriptor` itself (duplicated) or a pipe fed from it.
    static func readable(_ descriptor: CInt) -> CInt {
        if self.usable(descriptor) { return dup(descriptor) }
        var ends: [CInt] = [0, 0]
        guard pipe(&ends) == 0 else { return dup(descriptor) }
        let source = dup(descriptor)
        let sink = ends[1]
        Thread.detachNewThread {
            self.copy(from: source, to: sink)
        }
        return ends[0]
    }

    /// A descriptor NIO can write to: `descriptor` itself (duplicated) or a pipe drained into it.
    static func writable(_ descriptor: CInt) -> CInt {
        if self.usable(descriptor) { return dup(descriptor) }
        var ends: [CInt] = [0, 0]
        guard pipe(&ends) == 0 else { return dup(descriptor) }
        let sink = dup(descriptor)
        let source = ends[0]
        self.copies.enter()
        Thread.detachNewThread {
            self.copy(from: source, to: sink)
            self.copies.leave()
        }
        return ends[1]
    }

    static func copy(from source: CInt, to sink: CInt) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        defer {
            close(source)
            close(sink)
        }
        while true {
            let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { return }
            var offset = 0
            while offset < count {
                let written = buffer.withUnsafeBytes { write(sink, $0.baseAddress! + offset, count - offset) }
                if written < 0, errno == EINTR { continue }
                guard written > 0 else { return }
                offset += written
            }
        }
    }
}
