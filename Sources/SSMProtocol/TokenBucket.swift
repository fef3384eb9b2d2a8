/// A token bucket over an injected monotonic clock (nanoseconds): the service's rate limits
/// (agent pacing, MGS's data-message rate) and the client's own message-rate limiter, as a
/// pure, testable value.
public struct TokenBucket: Sendable, Equatable {
    /// Tokens added per second.
    public let rate: Double
    /// Most tokens held at once: the burst allowed after a quiet spell.
    public let capacity: Double
    public private(set) var tokens: Double
    private var lastRefill: UInt64?

    public init(rate: Double, capacity: Double) {
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
    }

    public mutating func refill(now: UInt64) {
        if let last = self.lastRefill, now > last {
            self.tokens = min(self.capacity, self.tokens + Double(now - last) * self.rate / 1e9)
        }
        self.lastRefill = now
    }

    /// Takes `amount` tokens if they are there.
    public mutating func take(_ amount: Double, now: UInt64) -> Bool {
        self.refill(now: now)
        guard self.tokens >= amount else { return false }
        self.tokens -= amount
        return true
    }

    /// Nanoseconds until `amount` tokens will be there.
    public func delay(until amount: Double) -> UInt64 {
        self.tokens >= amount ? 0 : UInt64(((amount - self.tokens) / self.rate * 1e9).rounded(.up))
    }
}
