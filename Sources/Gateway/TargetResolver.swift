import AWSClient
import Foundation

/// Turns what a user typed (an instance id, an alias, a Name tag) into a managed-node id.
public struct TargetResolver: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    let context: AWSContext
    public let aliases: [String: String]

    public init(context: AWSContext, aliasFile: String? = nil) throws {
        self.context = context
        self.aliases = try Self.loadAliases(aliasFile)
    }

    public static func isInstanceID(_ text: String) -> Bool {
        let parts = text.split(separator: "-", maxSplits: 1)
        guard parts.count == 2, parts[0] == "i" || parts[0] == "mi" else { return false }
        return (8...17).contains(parts[1].count) && parts[1].allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    public func resolve(_ host: String) async throws -> String {
        if Self.isInstanceID(host) { return host }
        if let target = self.aliases[host] { return target }
        let instances = try await self.context.ec2.describeInstances(
            instanceIDs: [], filters: [("tag:Name", [host]), ("instance-state-name", ["running"])])
        switch instances.count {
        case 1:
            return instances[0].instanceID
        case 0:
            throw Failure(description: "No running instance has the Name tag '\(host)' in \(self.context.configuration.region). Use an instance id (i-…/mi-…), an alias, or check the region and the tag.")
        default:
            let ids = instances.map(\.instanceID).sorted().joined(separator: ", ")
            throw Failure(description: "The Name '\(host)' is ambiguous: \(instances.count) running instances carry it (\(ids)). Use the instance id or an alias.")
        }
    }

    /// `~/.config/ssmgate/aliases`: one `name target` (or `name: target`) per line, `#` comments.
    public static func loadAliases(_ file: String?) throws -> [String: String] {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
        let path = file ?? ProcessInfo.processInfo.environment["SSMGATE_ALIASES"] ?? "\(home)/.config/ssmgate/aliases"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            if file != nil { throw Failure(description: "Cannot read the alias file \(path).") }
            return [:]
        }
        var aliases: [String: String] = [:]
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let fields = line.replacingOccurrences(of: ":", with: " ").split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.isEmpty { continue }
            guard fields.count == 2, Self.isInstanceID(String(fields[1])) else {
                throw Failure(description: "\(path):\(number + 1): expected `alias i-0123456789abcdef0`, found '\(line.trimmingCharacters(in: .whitespaces))'.")
            }
            aliases[String(fields[0])] = String(fields[1])
        }
        return aliases
    }
}
