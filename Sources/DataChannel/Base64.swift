import struct Foundation.Data

/// Base64 for the handshake's control payloads (KMS key blobs, challenges): never on the data path.
enum Base64 {
    static func encode(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    static func decode(_ text: String) -> [UInt8]? { Data(base64Encoded: text).map { Array($0) } }
}
