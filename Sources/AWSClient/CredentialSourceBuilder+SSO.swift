import Crypto
import Foundation
import SigV4

extension CredentialSourceBuilder {
    /// IAM Identity Center: the token `aws sso login` cached, exchanged at the portal (GetRoleCredentials)
    /// for role credentials. Token refresh through SSO OIDC is not done here: an expired token asks the user
    /// to log in again.
    func sso(profile: String) async throws -> AWSCredentials? {
        guard let values = self.shared.profile(profile) else { return nil }
        let sessionName = nonEmpty(values["sso_session"])
        guard sessionName != nil || values["sso_start_url"] != nil else { return nil }
        let source = "sso (profile \(profile))"
        var settings = values
        let cacheKey: String
        let login: String
        if let sessionName {
            guard let session = self.shared.ssoSessions[sessionName] else {
                throw AWSConfigurationError(
                    problem: "profile '\(profile)' has sso_session = \(sessionName), but \(self.shared.configFile) has no [sso-session \(sessionName)]",
                    remedy: "add that section with sso_start_url and sso_region, or run `aws configure sso`")
            }
            for key in ["sso_start_url", "sso_region"] {
                if let profileValue = values[key], let sessionValue = session[key], profileValue != sessionValue {
                    throw AWSConfigurationError(
                        problem: "profile '\(profile)' and [sso-session \(sessionName)] disagree on \(key)",
                        remedy: "remove \(key) from the profile")
                }
                if let sessionValue = session[key] { settings[key] = sessionValue }
            }
            cacheKey = sessionName
            login = "aws sso login --sso-session \(sessionName)"
        } else {
            cacheKey = settings["sso_start_url"] ?? ""
            login = "aws sso login --profile \(profile)"
        }
        let missing = ["sso_start_url", "sso_region", "sso_account_id", "sso_role_name"].filter { nonEmpty(settings[$0]) == nil }
        guard missing.isEmpty else {
            throw AWSConfigurationError(
                problem: "profile '\(profile)' is an SSO profile but lacks \(missing.joined(separator: ", "))",
                remedy: "add them (or run `aws configure sso --profile \(profile)`)")
        }
        let token = try self.cachedSSOToken(key: cacheKey, source: source, login: login)
        let region = settings["sso_region"]!
        let portal = self.configuration.endpoints.ssoPortal(region: region)
        let sender = AWSRequestSender(
            service: "sso", endpoint: portal, region: region, credentials: nil, httpClient: self.httpClient,
            retry: self.configuration.retry)
        let query = SigV4Request.encodeQuery([("account_id", settings["sso_account_id"]!), ("role_name", settings["sso_role_name"]!)])
        let response: AWSRequestSender.Response
        do {
            response = try await sender.send(
                operation: "GetRoleCredentials", method: "GET", path: "/federation/credentials", query: query,
                headers: [("x-amz-sso_bearer_token", token)], body: [], errorFormat: .json,
                resource: "\(settings["sso_role_name"]!) in account \(settings["sso_account_id"]!)")
        } catch let error as AWSServiceError {
            let redacted = error.redacting([token])
            let expired = error.httpStatus == 401 || error.code == "UnauthorizedException"
            throw AWSCredentialsError(
                source: source,
                problem: expired ? "the SSO session is no longer valid" : "the SSO portal refused GetRoleCredentials",
                remedy: expired ? "run `\(login)`" : "check sso_account_id and sso_role_name, then run `\(login)`",
                underlying: redacted)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
            let role = object["roleCredentials"] as? [String: Any], let key = role["accessKeyId"] as? String,
            let secret = role["secretAccessKey"] as? String
        else {
            throw AWSCredentialsError(
                source: source, problem: "the SSO portal's answer has no roleCredentials", remedy: "retry, or run `\(login)`")
        }
        let expiration = jsonNumber(role["expiration"]).map { Date(timeIntervalSince1970: $0 / 1000) }
        return AWSCredentials(
            accessKeyID: key, secretAccessKey: secret, sessionToken: role["sessionToken"] as? String, expiration: expiration)
    }

    /// `~/.aws/sso/cache/<sha1(key)>.json`, where key is the sso-session name or the legacy start URL.
    func cachedSSOToken(key: String, source: String, login: String) throws -> String {
        let digest = Insecure.SHA1.hash(data: Array(key.utf8)).map { String(format: "%02x", $0) }.joined()
        let path = "\(self.configuration.homeDirectory)/.aws/sso/cache/\(digest).json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AWSCredentialsError(source: source, problem: "no cached SSO token (\(path))", remedy: "run `\(login)`")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let token = object["accessToken"] as? String, let expiresAt = (object["expiresAt"] as? String).flatMap(parseTimestamp)
        else {
            throw AWSCredentialsError(
                source: source, problem: "the cached SSO token \(path) is unreadable", remedy: "run `\(login)`")
        }
        guard expiresAt > Date() else {
            throw AWSCredentialsError(source: source, problem: "the cached SSO token has expired", remedy: "run `\(login)`")
        }
        return token
    }
}
