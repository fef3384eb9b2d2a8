/// An smux stream identifier as carried in the frame header (uint32, little-endian on the wire).
///
/// A distinct type so stream ids are never confused with AgentMessage sequence numbers or byte counts.
public struct SmuxStreamID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32

    public init(rawValue: UInt32) {
        self.rawValue = rawValue
    }

    public init(_ rawValue: UInt32) {
        self.rawValue = rawValue
    }

    public var description: String { "\(self.rawValue)" }

    public static func < (lhs: SmuxStreamID, rhs: SmuxStreamID) -> Bool {
        lhs.rawValue < rhs.rawValue
    }
}
