import Foundation

/// The base URL of every service we call, resolved per service as botocore's configured-endpoint provider
/// does, so `AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL` and profile `endpoint_url`/`services` work as in awscli.
public struct AWSServiceEndpoints: Sendable, Equatable {
    public var ssm: URL
    public var ec2: URL
    public var kms: URL
    public var sts: URL
    /// The IAM Identity Center portal for the configuration's region. SSO profiles use their own
    /// `sso_region`: see ``ssoPortal(region:)``.
    public var sso: URL
    /// Whether `sso` was configured explicitly (then it applies whatever the `sso_region`).
    var ssoIsConfigured: Bool

    public init(ssm: URL, ec2: URL, kms: URL, sts: URL, sso: URL) {
        self.ssm = ssm
        self.ec2 = ec2
        self.kms = kms
        self.sts = sts
        self.sso = sso
        self.ssoIsConfigured = true
    }

    /// The defaults for `region`: `https://<service>.<region>.amazonaws.com` (`.com.cn` in China regions).
    public static func defaults(region: String) -> AWSServiceEndpoints {
        var endpoints = AWSServiceEndpoints(
            ssm: self.defaultURL("ssm", region: region), ec2: self.defaultURL("ec2", region: region),
            kms: self.defaultURL("kms", region: region), sts: self.defaultURL("sts", region: region),
            sso: self.defaultURL("portal.sso", region: region))
        endpoints.ssoIsConfigured = false
        return endpoints
    }

    /// The SSO portal endpoint for a profile's `sso_region`, unless one was configured.
    public func ssoPortal(region: String) -> URL {
        self.ssoIsConfigured ? self.sso : Self.defaultURL("portal.sso", region: region)
    }

    static func defaultURL(_ prefix: String, region: String) -> URL {
        let suffix = region.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        return URL(string: "https://\(prefix).\(region).\(suffix)")!
    }

    /// Per service: `AWS_ENDPOINT_URL_<SERVICE>` > the profile's `services` section > `AWS_ENDPOINT_URL` >
    /// the profile's `endpoint_url` > the default. `--endpoint-url` (SSM only) beats all of them.
    static func resolve(
        region: String, ssmOverride: URL?, environment: [String: String], profile: [String: String],
        profileName: String, shared: SharedConfig
    ) throws -> AWSServiceEndpoints {
        let ignore = [environment["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"], profile["ignore_configured_endpoint_urls"]]
            .contains { $0?.lowercased() == "true" }
        var servicesSection: [String: [String: String]] = [:]
        if !ignore, let name = profile["services"] {
            guard let section = shared.services[name] else {
                throw AWSConfigurationError(
                    problem: "profile '\(profileName)' names services = \(name), but \(shared.configFile) has no [services \(name)] section",
                    remedy: "add that section or remove the services setting")
            }
            servicesSection = section
        }
        func configured(_ key: String) throws -> URL? {
            guard !ignore else { return nil }
            let envName = "AWS_ENDPOINT_URL_\(key.uppercased())"
            if let value = nonEmpty(environment[envName]) { return try self.parse(value, origin: envName) }
            if let value = nonEmpty(servicesSection[key]?["endpoint_url"]) {
                return try self.parse(value, origin: "[services \(profile["services"] ?? "")] \(key).endpoint_url")
            }
            if let value = nonEmpty(environment["AWS_ENDPOINT_URL"]) { return try self.parse(value, origin: "AWS_ENDPOINT_URL") }
            if let value = nonEmpty(profile["endpoint_url"]) {
                return try self.parse(value, origin: "endpoint_url in profile '\(profileName)'")
            }
            return nil
        }
        var endpoints = self.defaults(region: region)
        if let url = try ssmOverride ?? configured("ssm") { endpoints.ssm = url }
        if let url = try configured("ec2") { endpoints.ec2 = url }
        if let url = try configured("kms") { endpoints.kms = url }
        if let url = try configured("sts") { endpoints.sts = url }
        if let url = try configured("sso") {
            endpoints.sso = url
            endpoints.ssoIsConfigured = true
        }
        return endpoints
    }

    static func parse(_ text: String, origin: String) throws -> URL {
        guard let url = URL(string: text.trimmingCharacters(in: .whitespaces)),
            let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https", url.host != nil
        else {
            throw AWSConfigurationError(
                problem: "\(origin) is not an http(s) URL: '\(text)'",
                remedy: "use a URL such as https://ssm.us-east-1.amazonaws.com or http://127.0.0.1:8080")
        }
        return url
    }
}
