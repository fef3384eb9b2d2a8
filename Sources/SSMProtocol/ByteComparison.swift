#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension UnsafeRawBufferPointer {
    /// Byte equality through `memcmp`: the generic `elementsEqual` walks two iterators a byte at a
    /// time, and these comparisons run several times per message.
    @inlinable
    func hasSameBytes(as other: UnsafeRawBufferPointer) -> Bool {
        guard self.count == other.count else { return false }
        guard self.count > 0, let left = self.baseAddress, let right = other.baseAddress else { return true }
        return memcmp(left, right, self.count) == 0
    }
}
