import NIOCore

/// The 128-bit id every AgentMessage carries.
///
/// Held as two big-endian halves of the logical UUID. On the wire the halves are swapped
/// (bytes 8...15 first, then 0...7), a quirk both official implementations share.
public struct MessageID: Hashable, Sendable, CustomStringConvertible {
    /// Bytes 0...7 of the logical UUID.
    public var high: UInt64
    /// Bytes 8...15 of the logical UUID.
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public static let zero = MessageID(high: 0, low: 0)

    /// A random version-4 UUID, as both official peers generate.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> MessageID {
        let high = (generator.next() & ~0xF000) | 0x4000  // version 4
        let low = (generator.next() & ~(0xC000_0000_0000_0000)) | 0x8000_0000_0000_0000  // RFC 4122 variant
        return MessageID(high: high, low: low)
    }

    /// From the system generator: one system call per id. Hot paths keep a ``FastRandom`` per channel
    /// and call ``random(using:)``.
    public static func random() -> MessageID {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    /// Parses the canonical 8-4-4-4-12 form (either case). Returns nil for anything else.
    public init?<S: StringProtocol>(_ text: S) {
        self.init(utf8: text.utf8)
    }

    /// Parses the canonical form in place: every acknowledgement carries one, so no iterator and
    /// one table lookup per digit.
    public init?(utf8 text: UnsafeRawBufferPointer) {
        guard text.count == 36, text[8] == UInt8(ascii: "-"), text[13] == UInt8(ascii: "-"), text[18] == UInt8(ascii: "-"),
            text[23] == UInt8(ascii: "-")
        else { return nil }
        var halves: (UInt64, UInt64) = (0, 0)
        var invalid: UInt8 = 0
        Self.hexTable.withUnsafeBufferPointer { table in
            var nibbles = 0
            for position in 0..<36 where position != 8 && position != 13 && position != 18 && position != 23 {
                let value = table[Int(text[position])]
                invalid |= value
                if nibbles < 16 {
                    halves.0 = halves.0 << 4 | UInt64(value)
                } else {
                    halves.1 = halves.1 << 4 | UInt64(value)
                }
                nibbles += 1
            }
        }
        // Valid digits are 0...15; the table marks everything else with bit 7.
        guard invalid & 0x80 == 0 else { return nil }
        self.init(high: halves.0, low: halves.1)
    }

    /// Each byte's hex value, or 0x80 for a byte that is not a hex digit.
    static let hexTable: [UInt8] = (0...255).map { byte in Self.hexValue(UInt8(byte)) ?? 0x80 }

    /// Parses the canonical form from its UTF-8 bytes.
    public init?<C: Collection>(utf8 text: C) where C.Element == UInt8 {
        let parsed = text.withContiguousStorageIfAvailable { MessageID(utf8: UnsafeRawBufferPointer($0)) }
            ?? Array(text).withUnsafeBytes { MessageID(utf8: $0) }
        guard let parsed else { return nil }
        self = parsed
    }

    /// Lowercase canonical form of the logical UUID, as acknowledgements carry it.
    public var description: String {
        String(unsafeUninitializedCapacity: 36) { self.writeCanonical(to: UnsafeMutableRawBufferPointer($0)) }
    }

    /// Writes the lowercase canonical form (36 bytes) into `buffer`, without making a `String`.
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 36) { self.writeCanonical(to: $0) }
    }

    /// The 36 bytes of the canonical 8-4-4-4-12 form; returns how many it wrote.
    private func writeCanonical(to out: UnsafeMutableRawBufferPointer) -> Int {
        var index = 0
        func put(_ value: UInt64, nibbles: Int) {
            var shift = (nibbles - 1) * 4
            while shift >= 0 {
                let nibble = UInt8(truncatingIfNeeded: value >> UInt64(shift)) & 0xF
                out[index] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") - 10 + nibble
                index += 1
                shift -= 4
            }
        }
        func dash() {
            out[index] = UInt8(ascii: "-")
            index += 1
        }
        put(self.high >> 32, nibbles: 8)
        dash()
        put((self.high >> 16) & 0xFFFF, nibbles: 4)
        dash()
        put(self.high & 0xFFFF, nibbles: 4)
        dash()
        put(self.low >> 48, nibbles: 4)
        dash()
        put(self.low & 0xFFFF_FFFF_FFFF, nibbles: 12)
        return index
    }

    static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
