import AsyncHTTPClient
import Foundation

/// KMS GenerateDataKey (JSON 1.1, `X-Amz-Target: TrentService.GenerateDataKey`), for sessions whose document
/// asks for KMS encryption: the data key's halves become the AES-GCM keys of the data channel.
public struct KMSClient: Sendable {
    let sender: AWSRequestSender

    public init(configuration: AWSClientConfiguration, credentials: any AWSCredentialProvider, httpClient: HTTPClient) {
        self.sender = AWSRequestSender(
            service: "kms", endpoint: \.kms, configuration: configuration, credentials: credentials, httpClient: httpClient)
    }

    /// Generates a data key under `keyID`.
    /// - Parameters:
    ///   - encryptionContext: for Session Manager, `aws:ssm:SessionId` and `aws:ssm:TargetId`; the agent must
    ///     pass the same context to Decrypt.
    ///   - numberOfBytes: 64 for Session Manager (two 32-byte keys).
    /// - Returns: the plaintext key (keep it in memory only) and the encrypted blob to hand to the agent.
    public func generateDataKey(
        keyID: String, encryptionContext: [String: String], numberOfBytes: Int
    ) async throws -> (plaintext: [UInt8], ciphertextBlob: [UInt8]) {
        let body: [String: Any] = ["KeyId": keyID, "EncryptionContext": encryptionContext, "NumberOfBytes": numberOfBytes]
        let answer = try await self.sender.json(
            targetPrefix: "TrentService", operation: "GenerateDataKey", body: body, resource: keyID)
        guard let plaintext = (answer["Plaintext"] as? String).flatMap({ Data(base64Encoded: $0) }),
            let blob = (answer["CiphertextBlob"] as? String).flatMap({ Data(base64Encoded: $0) })
        else {
            throw self.sender.malformed(
                operation: "GenerateDataKey", "the response has no base64 Plaintext or CiphertextBlob", resource: keyID)
        }
        return (Array(plaintext), Array(blob))
    }
}
