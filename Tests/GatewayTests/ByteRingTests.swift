import Crypto
import Foundation
import NIOCore
import Relay
import Testing

@Suite("ByteRing")
struct ByteRingTests {
    @Test("Writes take what fits, reads wrap around, and order is kept")
    func wrapAround() throws {
        let ring = ByteRing(capacity: 10)
        var input = ByteBuffer(bytes: Array(0..<8))
        #expect(ring.write(from: &input) == 8)
        var out = ByteBuffer()
        #expect(ring.read(into: &out, maximumBytes: 5) == 5)
        var more = ByteBuffer(bytes: Array(8..<20))
        #expect(ring.write(from: &more) == 7)  // 3 left + 7 = full
        #expect(more.readableBytes == 5)
        #expect(ring.writableBytes == 0)
        #expect(ring.write(from: &more) == 0)
        ring.read(into: &out, maximumBytes: 100)
        #expect(Array(out.readableBytesView) == Array(0..<15))
    }

    @Test("EOF is seen after the last byte; a closed reader refuses writes")
    func closing() {
        let ring = ByteRing(capacity: 4)
        var input = ByteBuffer(bytes: [1, 2])
        _ = ring.write(from: &input)
        ring.closeForWriting()
        #expect(!ring.isDrained)
        var out = ByteBuffer()
        ring.read(into: &out, maximumBytes: 4)
        #expect(ring.isDrained)
        var late = ByteBuffer(bytes: [3])
        #expect(ring.write(from: &late) == nil)

        let other = ByteRing(capacity: 4)
        other.closeForReading()
        var bytes = ByteBuffer(bytes: [9])
        #expect(other.write(from: &bytes) == nil)
    }

    @Test("One producer thread and one consumer thread move 8 MiB intact")
    func threads() async throws {
        let ring = ByteRing(capacity: 4096)
        var generator = SystemRandomNumberGenerator()
        let payload = (0..<(8 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let expected = SHA256.hash(data: payload)
        let producer = Thread {
            payload.withUnsafeBytes { all in
                var offset = 0
                while offset < all.count {
                    let chunk = UnsafeRawBufferPointer(rebasing: all[offset..<min(all.count, offset + 1500)])
                    offset += ring.write(chunk) ?? 0
                }
            }
            ring.closeForWriting()
        }
        producer.start()
        var hasher = SHA256()
        var scratch = [UInt8](repeating: 0, count: 3000)
        while !ring.isDrained {
            let count = scratch.withUnsafeMutableBytes { ring.read(into: $0) }
            if count == 0 { await Task.yield() } else { hasher.update(data: scratch[0..<count]) }
        }
        #expect(hasher.finalize() == expected)
    }
}
