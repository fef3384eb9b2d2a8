import Foundation
import SigV4

/// Something that hands out credentials for signing. Clients ask for them on every attempt, so a provider
/// that caches and refreshes (``CredentialChain``) keeps long-running gateways signed with fresh keys.
public protocol AWSCredentialProvider: Sendable {
    func credentials() async throws -> AWSCredentials
    /// Called when AWS rejected the credentials as expired, so a caching provider fetches new ones for the
    /// retry instead of handing out the same again. The default does nothing.
    func invalidateCredentials()
}

extension AWSCredentialProvider {
    public func invalidateCredentials() {}
}

/// Fixed credentials: for tests, the emulator, and embedders that manage keys themselves.
public struct StaticCredentialProvider: AWSCredentialProvider {
    let value: AWSCredentials

    public init(_ credentials: AWSCredentials) {
        self.value = credentials
    }

    public func credentials() async throws -> AWSCredentials { self.value }
}
