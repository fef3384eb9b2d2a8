import Foundation

/// The shared AWS files (`~/.aws/config` and `~/.aws/credentials`), parsed the way botocore's
/// `configloader` reads them, so a profile that works with the AWS CLI works here unchanged.
///
/// Values from the credentials file win over the config file for the same profile, as in botocore's
/// `Session.full_config`.
struct SharedConfig: Sendable {
    /// Profile name → keys (lowercased) → value. `[default]` and `[profile default]` are both `default`.
    var profiles: [String: [String: String]] = [:]
    /// Profiles as the config file alone has them (for static keys, which botocore reads there last).
    var configFileProfiles: [String: [String: String]] = [:]
    /// Profiles as the credentials file alone has them.
    var credentialsFileProfiles: [String: [String: String]] = [:]
    /// `[sso-session NAME]` sections.
    var ssoSessions: [String: [String: String]] = [:]
    /// `[services NAME]` sections: service key (`ssm`, `ec2`…) → nested keys (`endpoint_url`).
    var services: [String: [String: [String: String]]] = [:]
    var configFile: String
    var credentialsFile: String

    /// Loads both files; a missing file is an empty one, an unreadable or malformed one is an error naming it.
    static func load(environment: [String: String], homeDirectory: String) throws -> SharedConfig {
        let configFile = expandPath(environment["AWS_CONFIG_FILE"] ?? "~/.aws/config", home: homeDirectory)
        let credentialsFile = expandPath(
            environment["AWS_SHARED_CREDENTIALS_FILE"] ?? "~/.aws/credentials", home: homeDirectory)
        var config = SharedConfig(configFile: configFile, credentialsFile: credentialsFile)
        if let text = try readIfPresent(configFile) {
            for section in try INIParser.parse(text, file: configFile) {
                let name = section.name.trimmingCharacters(in: .whitespaces)
                if name == "default" {
                    config.configFileProfiles["default", default: [:]].merge(section.values) { $1 }
                } else if name.hasPrefix("profile ") {
                    let profile = name.dropFirst("profile ".count).trimmingCharacters(in: .whitespaces)
                    config.configFileProfiles[profile, default: [:]].merge(section.values) { $1 }
                } else if name.hasPrefix("sso-session ") {
                    let session = name.dropFirst("sso-session ".count).trimmingCharacters(in: .whitespaces)
                    config.ssoSessions[session] = section.values
                } else if name.hasPrefix("services ") {
                    let services = name.dropFirst("services ".count).trimmingCharacters(in: .whitespaces)
                    config.services[services] = section.nested
                }
                // Other sections (`[name]` without `profile `) are ignored in the config file, as botocore does.
            }
        }
        if let text = try readIfPresent(credentialsFile) {
            for section in try INIParser.parse(text, file: credentialsFile) {
                let name = section.name.trimmingCharacters(in: .whitespaces)
                config.credentialsFileProfiles[name, default: [:]].merge(section.values) { $1 }
            }
        }
        config.profiles = config.configFileProfiles.merging(config.credentialsFileProfiles) { $0.merging($1) { $1 } }
        return config
    }

    func profile(_ name: String) -> [String: String]? { self.profiles[name] }

    /// Where a profile is defined, for error messages.
    func location(of profile: String) -> String {
        "profile '\(profile)' (\(self.configFile) or \(self.credentialsFile))"
    }

    private static func readIfPresent(_ path: String) throws -> String? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return nil }
        // FileHandle rather than FileManager.contents: the latter gives nil for /dev/null, a common "no file".
        guard !isDirectory.boolValue,
            let data = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: path))).flatMap({ handle in
                defer { try? handle.close() }
                return (try? handle.readToEnd()) ?? Data()
            })
        else {
            throw AWSConfigurationError(
                problem: "cannot read \(path)",
                remedy: "check that it is a readable file, or point AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE elsewhere")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// `~` and `$VAR` expansion of paths from the environment and profiles (botocore uses `expanduser` and `expandvars`).
func expandPath(_ path: String, home: String) -> String {
    if path == "~" { return home }
    if path.hasPrefix("~/") { return home + path.dropFirst(1) }
    return path
}

/// A minimal `configparser.RawConfigParser`: `[section]` headers, `key = value` or `key: value`, full-line
/// `#`/`;` comments, indented continuation lines (which botocore reads as nested sub-sections).
enum INIParser {
    struct Section {
        var name: String
        /// Keys lowercased, as `optionxform` does.
        var values: [String: String] = [:]
        /// Values that were indented blocks (`s3 =\n  addressing_style = path`), parsed.
        var nested: [String: [String: String]] = [:]
    }

    static func parse(_ text: String, file: String) throws -> [Section] {
        var sections: [Section] = []
        var lastKey: String?
        for (index, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = String(rawLine)
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") || trimmed.hasPrefix(";") { continue }
            let isIndented = line.first == " " || line.first == "\t"
            if isIndented, let key = lastKey, !sections.isEmpty {
                // A continuation line: part of a nested block under `key`.
                let last = sections.count - 1
                let previous = sections[last].values[key] ?? ""
                sections[last].values[key] = previous + "\n" + trimmed
                if let equals = trimmed.firstIndex(of: "=") {
                    let nestedKey = trimmed[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
                    let nestedValue = trimmed[trimmed.index(after: equals)...].trimmingCharacters(in: .whitespaces)
                    sections[last].nested[key, default: [:]][nestedKey] = nestedValue
                }
                continue
            }
            if trimmed.hasPrefix("[") {
                guard trimmed.hasSuffix("]") else {
                    throw AWSConfigurationError(
                        problem: "\(file) line \(index + 1): a section header must end with ']'",
                        remedy: "fix the header, for example [profile NAME]")
                }
                sections.append(Section(name: String(trimmed.dropFirst().dropLast())))
                lastKey = nil
                continue
            }
            guard !sections.isEmpty else {
                throw AWSConfigurationError(
                    problem: "\(file) line \(index + 1): a setting appears before any [section] header",
                    remedy: "put settings under a header such as [default] or [profile NAME]")
            }
            let separator = trimmed.firstIndex { $0 == "=" || $0 == ":" }
            guard let separator else {
                throw AWSConfigurationError(
                    problem: "\(file) line \(index + 1): expected 'key = value'",
                    remedy: "fix or remove that line")
            }
            let key = trimmed[..<separator].trimmingCharacters(in: .whitespaces).lowercased()
            let value = trimmed[trimmed.index(after: separator)...].trimmingCharacters(in: .whitespaces)
            sections[sections.count - 1].values[key] = value
            lastKey = key
        }
        return sections
    }
}
