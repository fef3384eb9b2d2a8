import Crypto
import NIOCore

/// The client half of KMS session encryption (reference section 9): AES-256-GCM with the 64-byte
/// data key split in two, `nonce(12) || ciphertext || tag(16)` on the wire, no additional data.
public struct SessionCipher: Sendable {
    /// Decrypts agent → client traffic: data key bytes 0–31.
    let decryptKey: SymmetricKey
    /// Encrypts client → agent traffic: data key bytes 32–63.
    let encryptKey: SymmetricKey

    public static let overhead = 28

    public init(dataKey: some Collection<UInt8>) throws(DataChannelError) {
        let bytes = Array(dataKey)
        guard bytes.count == 64 else {
            throw .handshakeFailed("the KMS data key has \(bytes.count) bytes, 64 expected")
        }
        self.decryptKey = SymmetricKey(data: bytes[0..<32])
        self.encryptKey = SymmetricKey(data: bytes[32..<64])
    }

    /// Encrypts with a fresh random nonce, as the official client does.
    public func encrypt(_ plaintext: ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator()) throws -> ByteBuffer {
        try self.encrypt(plaintext, nonce: AES.GCM.Nonce(), allocator: allocator)
    }

    func encrypt(_ plaintext: ByteBuffer, nonce: AES.GCM.Nonce, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        let sealed = try plaintext.withUnsafeReadableBytes { try AES.GCM.seal($0, using: self.encryptKey, nonce: nonce) }
        var out = allocator.buffer(capacity: plaintext.readableBytes + Self.overhead)
        nonce.withUnsafeBytes { _ = out.writeBytes($0) }
        out.writeBytes(sealed.ciphertext)
        out.writeBytes(sealed.tag)
        return out
    }

    /// Decrypts what the agent encrypted; a wrong key or a damaged message fails authentication.
    public func decrypt(_ wire: ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator()) throws -> ByteBuffer {
        try Self.open(wire, key: self.decryptKey, allocator: allocator)
    }

    /// The challenge answer: decrypt with the agent's key, re-encrypt with ours.
    public func answerChallenge(_ challenge: ByteBuffer) throws -> ByteBuffer {
        try self.encrypt(try self.decrypt(challenge))
    }

    static func open(_ wire: ByteBuffer, key: SymmetricKey, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        guard wire.readableBytes >= Self.overhead else { throw CryptoKitError.incorrectParameterSize }
        let plaintext = try wire.withUnsafeReadableBytes { raw -> Data in
            let nonce = try AES.GCM.Nonce(data: raw[0..<12])
            let box = try AES.GCM.SealedBox(
                nonce: nonce, ciphertext: raw[12..<(raw.count - 16)], tag: raw[(raw.count - 16)...])
            return try AES.GCM.open(box, using: key)
        }
        var out = allocator.buffer(capacity: plaintext.count)
        out.writeBytes(plaintext)
        return out
    }
}

import struct Foundation.Data
