/// A token bucket over an injected monotonic clock (nanoseconds): the service's rate limits
/// (agent pacing, MGS's data-message rate) as a pure, testable value.
struct TokenBucket: Sendable, Equatable {
    /// Tokens added per second.
    let rate: Double
    /// Most tokens held at once: the burst allowed after a quiet spell.
    let capacity: Double
    private(set) var tokens: Double
    private var lastRefill: UInt64?

    init(rate: Double, capacity: Double) {
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
    }

    mutating func refill(now: UInt64) {
        if let last = self.lastRefill, now > last {
            self.tokens = min(self.capacity, self.tokens + Double(now - last) * self.rate / 1e9)
        }
        self.lastRefill = now
    }

    /// Takes `amount` tokens if they are there.
    mutating func take(_ amount: Double, now: UInt64) -> Bool {
        self.refill(now: now)
        guard self.tokens >= amount else { return false }
        self.tokens -= amount
        return true
    }

    /// Nanoseconds until `amount` tokens will be there.
    func delay(until amount: Double) -> UInt64 {
        self.tokens >= amount ? 0 : UInt64(((amount - self.tokens) / self.rate * 1e9).rounded(.up))
    }
}
