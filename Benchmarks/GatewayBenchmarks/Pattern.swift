import Foundation
import NIOCore

/// The bytes every benchmark stream carries: a random sequence of prime period, repeated, so
/// the receiver can check each byte against its position (a byte lost, added, changed or moved by
/// less than the period shows up) without hashing in the timed path.
struct Pattern: Sendable {
    /// Prime, so buffers of power-of-two sizes never line up with it.
    static let period = 1_048_573
    /// Longest slice handed out at once.
    static let maximumChunk = 65_536

    /// `period + maximumChunk` bytes: byte `i` is byte `i % period` of the sequence, so a slice of
    /// up to `maximumChunk` bytes can start at any offset without wrapping.
    let bytes: ByteBuffer

    init() {
        var generator = SystemRandomNumberGenerator()
        var sequence = [UInt8](repeating: 0, count: Self.period)
        var index = 0
        while index < Self.period {
            var word = generator.next()
            for _ in 0..<8 where index < Self.period {
                sequence[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        var bytes = ByteBufferAllocator().buffer(capacity: Self.period + Self.maximumChunk)
        bytes.writeBytes(sequence)
        bytes.writeBytes(sequence[0..<Self.maximumChunk])
        self.bytes = bytes
    }

    /// The stream's bytes `offset..<offset+length` (length at most `maximumChunk`), sharing storage.
    func slice(at offset: Int, length: Int) -> ByteBuffer {
        precondition(length <= Self.maximumChunk)
        return self.bytes.getSlice(at: self.bytes.readerIndex + offset % Self.period, length: length)!
    }

    /// Whether `buffer` is exactly the stream's bytes from `offset` on.
    func matches(_ buffer: ByteBuffer, at offset: Int) -> Bool {
        var position = 0
        let total = buffer.readableBytes
        return buffer.withUnsafeReadableBytes { received in
            self.bytes.withUnsafeReadableBytes { expected in
                while position < total {
                    let start = (offset + position) % Self.period
                    let length = min(total - position, Self.maximumChunk)
                    if memcmp(received.baseAddress! + position, expected.baseAddress! + start, length) != 0 { return false }
                    position += length
                }
                return true
            }
        }
    }
}
