import Foundation
import NIOCore
import SigV4
import Synchronization

/// Temporary credentials the emulator's STS issued, until they expire.
final class IssuedCredentials: Sendable {
    private struct Entry {
        var credential: LocalSSMConfiguration.Credential
        var expiration: Date
    }

    private let entries = Mutex<[String: Entry]>([:])

    func issue(_ credential: LocalSSMConfiguration.Credential, expiration: Date) {
        self.entries.withLock { entries in
            let now = Date()
            entries = entries.filter { $0.value.expiration > now }
            entries[credential.accessKeyID] = Entry(credential: credential, expiration: expiration)
        }
    }

    /// The credential of an unexpired key; nil for unknown and expired ones (AWS answers both alike).
    func credential(_ accessKeyID: String) -> LocalSSMConfiguration.Credential? {
        self.entries.withLock { entries in
            guard let entry = entries[accessKeyID], entry.expiration > Date() else { return nil }
            return entry.credential
        }
    }
}

/// STS `AssumeRole`, as far as the gateway's per-user roles need it: any role of the emulator's
/// account may be assumed; the temporary key acts as `assumed-role/ROLE/SESSION` and its sessions
/// are named after the role session, as on AWS.
struct STSAPI {
    let configuration: LocalSSMConfiguration
    let issued: IssuedCredentials

    static let namespace = "https://sts.amazonaws.com/doc/2011-06-15/"

    func handle(form: [(String, String)], caller: LocalSSMConfiguration.Credential) -> SSMAPI.Response {
        let requestID = UUID().uuidString.lowercased()
        do {
            let action = Self.value("Action", in: form) ?? ""
            guard action == "AssumeRole" else { throw AWSAPIError.unknownOperation(action) }
            return try self.assumeRole(form: form, caller: caller, requestID: requestID)
        } catch let error as AWSAPIError {
            return Self.failure(error, requestID: requestID)
        } catch {
            return Self.failure(AWSAPIError(status: 500, code: "InternalFailure", message: "\(error)"), requestID: requestID)
        }
    }

    func assumeRole(form: [(String, String)], caller: LocalSSMConfiguration.Credential, requestID: String) throws -> SSMAPI.Response {
        guard let roleARN = Self.value("RoleArn", in: form) else { throw Self.missing("roleArn") }
        guard let sessionName = Self.value("RoleSessionName", in: form) else { throw Self.missing("roleSessionName") }
        try Self.checkName(sessionName, field: "roleSessionName")
        let sourceIdentity = Self.value("SourceIdentity", in: form)
        if let sourceIdentity { try Self.checkName(sourceIdentity, field: "sourceIdentity") }
        var duration = 3600
        if let text = Self.value("DurationSeconds", in: form) {
            guard let seconds = Int(text), (900...43200).contains(seconds) else {
                throw AWSAPIError(code: "ValidationError", message: "1 validation error detected: Value '\(text)' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200")
            }
            duration = seconds
        }
        let account = self.configuration.accountID
        let prefix = "arn:aws:iam::\(account):role/"
        guard roleARN.hasPrefix(prefix), roleARN.count > prefix.count else {
            let who = caller.principalARN ?? "arn:aws:iam::\(account):user/\(caller.userName)"
            throw AWSAPIError(status: 403, code: "AccessDenied", message: "User: \(who) is not authorized to perform: sts:AssumeRole on resource: \(roleARN)")
        }
        // A role chain keeps the SourceIdentity it started with (AWS refuses to change it).
        if let inherited = caller.sourceIdentity, let sourceIdentity, sourceIdentity != inherited {
            throw AWSAPIError(status: 403, code: "AccessDenied", message: "SourceIdentity cannot be changed from '\(inherited)' in a role chain")
        }
        let roleName = String(roleARN.dropFirst(prefix.count).split(separator: "/").last ?? "")
        let principal = "arn:aws:sts::\(account):assumed-role/\(roleName)/\(sessionName)"
        let expiration = Date().addingTimeInterval(TimeInterval(duration))
        let credential = LocalSSMConfiguration.Credential(
            accessKeyID: "ASIA" + Self.randomString(count: 16, alphabet: "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
            secretAccessKey: Self.randomString(count: 40, alphabet: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"),
            userName: sessionName, allowedDocuments: nil,
            sessionToken: "FwoGZXIvYXdzE" + Self.randomString(count: 300, alphabet: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"),
            principalARN: principal, sourceIdentity: sourceIdentity ?? caller.sourceIdentity)
        self.issued.issue(credential, expiration: expiration)
        let roleID = "AROA" + Self.randomString(count: 17, alphabet: "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        let sourceElement = credential.sourceIdentity.map { "<SourceIdentity>\(xmlEscape($0))</SourceIdentity>" } ?? ""
        let xml = """
            <AssumeRoleResponse xmlns="\(Self.namespace)"><AssumeRoleResult>\(sourceElement)\
            <AssumedRoleUser><AssumedRoleId>\(roleID):\(xmlEscape(sessionName))</AssumedRoleId><Arn>\(xmlEscape(principal))</Arn></AssumedRoleUser>\
            <Credentials><AccessKeyId>\(credential.accessKeyID)</AccessKeyId><SecretAccessKey>\(credential.secretAccessKey)</SecretAccessKey>\
            <SessionToken>\(credential.sessionToken ?? "")</SessionToken><Expiration>\(formatter.string(from: expiration))</Expiration></Credentials>\
            </AssumeRoleResult><ResponseMetadata><RequestId>\(requestID)</RequestId></ResponseMetadata></AssumeRoleResponse>
            """
        return SSMAPI.Response(status: 200, contentType: "text/xml", body: ByteBuffer(string: xml))
    }

    /// The Query protocol's error document, as STS sends it.
    static func failure(_ error: AWSAPIError, requestID: String) -> SSMAPI.Response {
        let xml = """
            <ErrorResponse xmlns="\(Self.namespace)"><Error><Type>Sender</Type><Code>\(xmlEscape(error.code))</Code>\
            <Message>\(xmlEscape(error.message))</Message></Error><RequestId>\(requestID)</RequestId></ErrorResponse>
            """
        return SSMAPI.Response(status: error.status, contentType: "text/xml", body: ByteBuffer(string: xml))
    }

    static func value(_ name: String, in form: [(String, String)]) -> String? {
        form.first { $0.0 == name }?.1
    }

    static func missing(_ field: String) -> AWSAPIError {
        AWSAPIError(code: "ValidationError", message: "1 validation error detected: Value null at '\(field)' failed to satisfy constraint: Member must not be null")
    }

    /// RoleSessionName and SourceIdentity: 2 to 64 of `[\w+=,.@-]`.
    static func checkName(_ name: String, field: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+=,.@-")
        guard (2...64).contains(name.count), name.allSatisfy({ allowed.contains($0) }) else {
            throw AWSAPIError(code: "ValidationError", message: "1 validation error detected: Value '\(name)' at '\(field)' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]* and have length between 2 and 64")
        }
    }

    static func randomString(count: Int, alphabet: String) -> String {
        let characters = Array(alphabet)
        var generator = SystemRandomNumberGenerator()
        return String((0..<count).map { _ in characters[Int(generator.next(upperBound: UInt32(characters.count)))] })
    }
}
