/// A small, fast, seedable random generator (SplitMix64): fault decisions in the emulator and
/// randomized tests must be repeatable from a printed seed. Not for anything secret.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { self.state = seed }

    public mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `rate` (0…1).
    public mutating func chance(_ rate: Double) -> Bool {
        rate > 0 && Double(self.next() >> 11) / Double(1 << 53) < rate
    }
}
