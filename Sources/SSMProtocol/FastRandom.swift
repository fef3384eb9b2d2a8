/// A fast random generator for per-message values that must be unique and well spread but are
/// not secret: message ids (version-4 UUIDs) and WebSocket masking keys. xoshiro256**, seeded once
/// from the system generator, so a channel makes one `getrandom` call in all instead of one or two
/// per message.
///
/// Keep one per channel (it is a value: copies repeat each other's output).
public struct FastRandom: RandomNumberGenerator, Sendable {
    private var s0: UInt64
    private var s1: UInt64
    private var s2: UInt64
    private var s3: UInt64

    /// Seeded from the system's random source.
    public init() {
        var system = SystemRandomNumberGenerator()
        self.init(s0: system.next(), s1: system.next(), s2: system.next(), s3: system.next())
    }

    /// A repeatable sequence (tests).
    public init(seed: UInt64) {
        var mix = SplitMix64(seed: seed)
        self.init(s0: mix.next(), s1: mix.next(), s2: mix.next(), s3: mix.next())
    }

    private init(s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64) {
        // The all-zero state is the one xoshiro cannot leave.
        let allZero = s0 | s1 | s2 | s3 == 0
        self.s0 = allZero ? 0x9E37_79B9_7F4A_7C15 : s0
        self.s1 = s1
        self.s2 = s2
        self.s3 = s3
    }

    @inlinable
    static func rotateLeft(_ value: UInt64, _ count: UInt64) -> UInt64 {
        (value << count) | (value >> (64 - count))
    }

    public mutating func next() -> UInt64 {
        let result = Self.rotateLeft(self.s1 &* 5, 7) &* 9
        let t = self.s1 << 17
        self.s2 ^= self.s0
        self.s3 ^= self.s1
        self.s1 ^= self.s2
        self.s0 ^= self.s3
        self.s2 ^= t
        self.s3 = Self.rotateLeft(self.s3, 45)
        return result
    }
}
