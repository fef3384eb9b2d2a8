import NIOCore
import Synchronization

/// A fixed-capacity byte ring shared by one producer and one consumer on different threads
/// (a libssh session thread and an event loop). Storage is allocated once; bytes are copied in
/// once and out once, and a full ring is the backpressure signal: `write` takes what fits.
///
/// Both sides also see the other's end-of-stream: the producer's `closeForWriting()` is read as
/// EOF after the last byte, the consumer's `closeForReading()` makes later writes fail.
public final class ByteRing: Sendable {
    struct State {
        var head = 0
        var count = 0
        var writerClosed = false
        var readerClosed = false
    }

    public let capacity: Int
    // Touched only under `state`'s lock (or in init/deinit).
    nonisolated(unsafe) private let storage: UnsafeMutableRawBufferPointer
    private let state: Mutex<State>

    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.storage = .allocate(byteCount: capacity, alignment: 16)
        self.state = Mutex(State())
    }

    deinit {
        self.storage.deallocate()
    }

    /// Bytes waiting to be read.
    public var readableBytes: Int { self.state.withLock { $0.count } }
    /// Room left for the producer.
    public var writableBytes: Int { self.state.withLock { self.capacity - $0.count } }
    /// The producer is done and every byte has been read: the consumer's EOF.
    public var isDrained: Bool { self.state.withLock { $0.writerClosed && $0.count == 0 } }
    public var isClosedForWriting: Bool { self.state.withLock { $0.writerClosed } }
    public var isClosedForReading: Bool { self.state.withLock { $0.readerClosed } }

    /// Copies as many of `bytes` as fit; returns how many. A closed ring takes nothing and
    /// returns nil, so the producer can tell "full" from "gone".
    public func write(_ bytes: UnsafeRawBufferPointer) -> Int? {
        // The copy happens under the lock; each side holds it only for a memcpy.
        self.state.withLock { state -> Int? in
            if state.readerClosed || state.writerClosed { return nil }
            let count = min(bytes.count, self.capacity - state.count)
            guard count > 0 else { return 0 }
            let tail = (state.head + state.count) % self.capacity
            let first = min(count, self.capacity - tail)
            self.storage.baseAddress!.advanced(by: tail).copyMemory(from: bytes.baseAddress!, byteCount: first)
            if count > first {
                self.storage.baseAddress!.copyMemory(from: bytes.baseAddress!.advanced(by: first), byteCount: count - first)
            }
            state.count += count
            return count
        }
    }

    /// Writes the readable bytes of `buffer` that fit and moves its reader index past them.
    public func write(from buffer: inout ByteBuffer) -> Int? {
        let taken = buffer.withUnsafeReadableBytes { self.write($0) }
        if let taken { buffer.moveReaderIndex(forwardBy: taken) }
        return taken
    }

    /// Copies up to `destination.count` bytes out; returns how many (0: empty for now).
    public func read(into destination: UnsafeMutableRawBufferPointer) -> Int {
        self.state.withLock { state -> Int in
            let count = min(destination.count, state.count)
            guard count > 0 else { return 0 }
            let first = min(count, self.capacity - state.head)
            destination.baseAddress!.copyMemory(from: self.storage.baseAddress!.advanced(by: state.head), byteCount: first)
            if count > first {
                destination.baseAddress!.advanced(by: first).copyMemory(from: self.storage.baseAddress!, byteCount: count - first)
            }
            state.head = (state.head + count) % self.capacity
            state.count -= count
            return count
        }
    }

    /// Reads up to `maximumBytes` into `buffer`'s writable space (growing it once if needed).
    @discardableResult
    public func read(into buffer: inout ByteBuffer, maximumBytes: Int) -> Int {
        let want = min(maximumBytes, self.readableBytes)
        guard want > 0 else { return 0 }
        buffer.reserveCapacity(minimumWritableBytes: want)
        return buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { pointer in
            self.read(into: UnsafeMutableRawBufferPointer(rebasing: pointer.prefix(want)))
        }
    }

    /// The producer's EOF.
    public func closeForWriting() {
        self.state.withLock { $0.writerClosed = true }
    }

    /// The consumer is gone: drop what is buffered, refuse further writes.
    public func closeForReading() {
        self.state.withLock {
            $0.readerClosed = true
            $0.count = 0
        }
    }
}
