import AWSClient
import Crypto
import Foundation
import NIOConcurrencyHelpers
import SigV4

/// One `type base64 [comment]` public key, as in authorized_keys.
public struct AuthorizedKey: Sendable, Hashable {
    public var type: String
    public var base64: String
    public var comment: String

    /// Parses an authorized_keys line; options before the key type are not supported (nil).
    public init?(line: String) {
        let fields = line.split(omittingEmptySubsequences: true, whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count >= 2, Self.knownTypes.contains(String(fields[0])),
            let blob = Data(base64Encoded: String(fields[1])), !blob.isEmpty
        else { return nil }
        self.type = String(fields[0])
        self.base64 = String(fields[1])
        self.comment = fields.dropFirst(2).joined(separator: " ")
    }

    static let knownTypes: Set<String> = [
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    ]

    /// `SHA256:…` as `ssh-keygen -l` prints it.
    public var fingerprint: String {
        let digest = SHA256.hash(data: Data(base64Encoded: self.base64) ?? Data())
        return "SHA256:" + Data(digest).base64EncodedString().replacingOccurrences(of: "=", with: "")
    }

    /// Every key in a file of authorized_keys lines (comments and unknown lines skipped).
    public static func load(file: String) -> [AuthorizedKey] {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            return trimmed.hasPrefix("#") ? nil : AuthorizedKey(line: trimmed)
        }
    }
}

/// What a user may reach: targets by pattern and ports.
///
/// Target patterns: `*` (anything), a glob on the instance id (`i-0abc*`), `name:GLOB` on the Name
/// tag, `tag:KEY=GLOB` on any tag, `host:GLOB` on the remote host of a remote-host route; a bare
/// glob matches the id, the Name tag or the host as the user typed it.
public struct AccessRule: Sendable, Hashable {
    public var targets: [String]
    /// Empty: every port.
    public var ports: [ClosedRange<Int>]

    public init(targets: [String], ports: [ClosedRange<Int>] = []) {
        self.targets = targets
        self.ports = ports
    }

    public static let everything = AccessRule(targets: ["*"])

    func allows(_ target: TargetInfo, remoteHost: String?, typedHost: String, port: Int) -> Bool {
        guard self.ports.isEmpty || self.ports.contains(where: { $0.contains(port) }) else { return false }
        return self.targets.contains { Self.pattern($0, matches: target, remoteHost: remoteHost, typedHost: typedHost) }
    }

    static func pattern(_ pattern: String, matches target: TargetInfo, remoteHost: String?, typedHost: String) -> Bool {
        if pattern.hasPrefix("name:") {
            return target.name.map { Glob.matches(String(pattern.dropFirst(5)), $0) } ?? false
        }
        if pattern.hasPrefix("tag:") {
            let body = pattern.dropFirst(4)
            guard let equals = body.firstIndex(of: "=") else { return false }
            let key = String(body[..<equals])
            return target.tags[key].map { Glob.matches(String(body[body.index(after: equals)...]), $0) } ?? false
        }
        if pattern.hasPrefix("host:") {
            return remoteHost.map { Glob.matches(String(pattern.dropFirst(5)), $0) } ?? false
        }
        if remoteHost != nil, pattern != "*" {
            // A remote host is reached only by rules that name it (or allow everything).
            return Glob.matches(pattern, remoteHost!) || Glob.matches(pattern, typedHost)
        }
        return Glob.matches(pattern, target.id) || target.name.map { Glob.matches(pattern, $0) } ?? false
            || Glob.matches(pattern, typedHost)
    }
}

/// A gateway user: keys, access rules, and the IAM role their sessions run as.
public struct GatewayUser: Sendable, Hashable {
    public var name: String
    public var keys: [AuthorizedKey]
    public var rules: [AccessRule]
    /// Sessions for this user run as this role, with RoleSessionName and SourceIdentity = the user.
    public var roleARN: String?
    /// SHA-256 (hex) of the password for SOCKS5 / HTTP proxy authentication, when set.
    public var passwordSHA256: String?

    public init(name: String, keys: [AuthorizedKey], rules: [AccessRule], roleARN: String? = nil, passwordSHA256: String? = nil) {
        self.name = name
        self.keys = keys
        self.rules = rules
        self.roleARN = roleARN
        self.passwordSHA256 = passwordSHA256
    }

    public func allows(_ target: TargetInfo, remoteHost: String?, typedHost: String, port: Int) -> Bool {
        self.rules.contains { $0.allows(target, remoteHost: remoteHost, typedHost: typedHost, port: port) }
    }
}

/// The users of the gateway, looked up by key or password.
public struct UserDirectory: Sendable {
    public var users: [String: GatewayUser]

    public init(users: [GatewayUser]) {
        self.users = Dictionary(users.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// The SSH login name must be a configured user (or "*" users accept any login name).
    public func authenticate(login: String, keyType: String, keyBase64: String) -> AuthenticatedUser? {
        for user in [self.users[login], self.users["*"]].compactMap({ $0 }) {
            if let key = user.keys.first(where: { $0.type == keyType && $0.base64 == keyBase64 }) {
                return AuthenticatedUser(name: user.name == "*" ? login : user.name, keyFingerprint: key.fingerprint)
            }
        }
        return nil
    }

    public func user(named name: String) -> GatewayUser? {
        if let user = self.users[name] { return user }
        if var any = self.users["*"] {
            any.name = name
            return any
        }
        return nil
    }

    /// The SOCKS5 / HTTP proxy password check.
    public func authenticate(user: String, password: String) -> String? {
        guard let expected = self.users[user]?.passwordSHA256 else { return nil }
        let digest = SHA256.hash(data: Data(password.utf8)).map { String(format: "%02x", $0) }.joined()
        return digest == expected.lowercased() ? user : nil
    }
}

/// Credentials of a role assumed for one gateway user, refreshed five minutes before they expire,
/// so CloudTrail names the person (RoleSessionName and SourceIdentity) rather than the gateway.
public final class AssumedRoleCredentials: AWSCredentialProvider {
    let sts: STSClient
    let roleARN: String
    let user: String
    let cached = NIOLockedValueBox<AWSCredentials?>(nil)

    public init(sts: STSClient, roleARN: String, user: String) {
        self.sts = sts
        self.roleARN = roleARN
        self.user = user
    }

    public func credentials() async throws -> AWSCredentials {
        if let current = self.cached.withLockedValue({ $0 }), let expiration = current.expiration,
            expiration.timeIntervalSinceNow > 300
        {
            return current
        }
        let name = Self.sessionName(self.user)
        let fresh = try await self.sts.assumeRole(roleARN: self.roleARN, sessionName: name, sourceIdentity: name)
        self.cached.withLockedValue { $0 = fresh }
        return fresh
    }

    public func invalidateCredentials() {
        self.cached.withLockedValue { $0 = nil }
    }

    /// RoleSessionName allows `[\w+=,.@-]{2,64}`.
    static func sessionName(_ user: String) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+=,.@-")
        var name = String(user.map { allowed.contains($0) ? $0 : "-" }.prefix(64))
        while name.count < 2 { name += "-" }
        return name
    }
}
