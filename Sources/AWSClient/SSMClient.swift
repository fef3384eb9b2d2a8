import AsyncHTTPClient
import Foundation

/// The Systems Manager calls the gateway needs (JSON 1.1, `X-Amz-Target: AmazonSSM.<Op>`): starting, resuming
/// and ending sessions, and listing managed nodes for name resolution and `ssmgate ls`.
public struct SSMClient: Sendable {
    let sender: AWSRequestSender

    /// - Parameters:
    ///   - configuration: region and endpoint (`--endpoint-url` applies here).
    ///   - credentials: asked on every attempt, so a refreshing provider keeps long-lived gateways working.
    ///   - httpClient: owned by the caller, who shuts it down.
    public init(configuration: AWSClientConfiguration, credentials: any AWSCredentialProvider, httpClient: HTTPClient) {
        self.sender = AWSRequestSender(
            service: "ssm", endpoint: \.ssm, configuration: configuration, credentials: credentials, httpClient: httpClient)
    }

    /// The endpoint calls go to; session-manager-plugin receives it as argv[6].
    public var endpoint: URL { self.sender.endpoint }

    /// Starts a session on `target` (`i-…`, `mi-…`).
    /// - Parameters:
    ///   - documentName: `nil` means the service default, a shell (`SSM-SessionManagerRunShell`).
    ///   - parameters: the document's parameters; each value is a list of strings, as the API models it.
    ///   - reason: shown in the session history.
    public func startSession(
        target: String, documentName: String?, parameters: [String: [String]], reason: String?
    ) async throws -> StartSessionResponse {
        var body: [String: Any] = ["Target": target]
        if let documentName { body["DocumentName"] = documentName }
        if !parameters.isEmpty { body["Parameters"] = parameters }
        if let reason { body["Reason"] = reason }
        let answer = try await self.sender.json(
            targetPrefix: "AmazonSSM", operation: "StartSession", body: body, resource: target)
        return try self.sessionResponse(answer, operation: "StartSession", resource: target)
    }

    /// Asks for a new token and stream URL for a session whose data channel dropped.
    ///
    /// An empty ``StartSessionResponse/tokenValue`` means the session can no longer be resumed (it ended or
    /// timed out), which the official client reports as a time-out.
    public func resumeSession(sessionID: String) async throws -> StartSessionResponse {
        let answer = try await self.sender.json(
            targetPrefix: "AmazonSSM", operation: "ResumeSession", body: ["SessionId": sessionID], resource: sessionID)
        return try self.sessionResponse(answer, operation: "ResumeSession", resource: sessionID, tokenRequired: false)
    }

    /// Ends a session on the service side; the agent then closes its end.
    public func terminateSession(sessionID: String) async throws {
        _ = try await self.sender.json(
            targetPrefix: "AmazonSSM", operation: "TerminateSession", body: ["SessionId": sessionID], resource: sessionID)
    }

    /// Lists managed nodes, following `NextToken` until the end.
    /// - Parameter filters: `Filters` of the API, such as `("PingStatus", ["Online"])`, `("tag:Name", ["web"])`,
    ///   `("InstanceIds", ["i-…"])`.
    public func describeInstanceInformation(filters: [(key: String, values: [String])]) async throws -> [InstanceInformation] {
        var results: [InstanceInformation] = []
        var nextToken: String?
        var pages = 0
        repeat {
            var body: [String: Any] = ["MaxResults": 50]
            if !filters.isEmpty { body["Filters"] = filters.map { ["Key": $0.key, "Values": $0.values] } }
            if let nextToken { body["NextToken"] = nextToken }
            let answer = try await self.sender.json(
                targetPrefix: "AmazonSSM", operation: "DescribeInstanceInformation", body: body, resource: nil)
            for item in answer["InstanceInformationList"] as? [[String: Any]] ?? [] {
                guard let id = item["InstanceId"] as? String else { continue }
                results.append(
                    InstanceInformation(
                        instanceID: id, pingStatus: item["PingStatus"] as? String ?? "",
                        platformType: item["PlatformType"] as? String, platformName: item["PlatformName"] as? String,
                        agentVersion: item["AgentVersion"] as? String, computerName: item["ComputerName"] as? String,
                        ipAddress: item["IPAddress"] as? String, resourceType: item["ResourceType"] as? String,
                        name: item["Name"] as? String))
            }
            nextToken = (answer["NextToken"] as? String).flatMap { $0.isEmpty ? nil : $0 }
            pages += 1
        } while nextToken != nil && pages < Self.maximumPages
        return results
    }

    /// Guards against a service (or emulator) that keeps returning a token: 1000 pages of 50 is far beyond any fleet.
    static let maximumPages = 1000

    private func sessionResponse(
        _ answer: [String: Any], operation: String, resource: String, tokenRequired: Bool = true
    ) throws -> StartSessionResponse {
        guard let sessionID = answer["SessionId"] as? String else {
            throw self.sender.malformed(operation: operation, "the response has no SessionId", resource: resource)
        }
        let token = answer["TokenValue"] as? String ?? ""
        let streamURL = answer["StreamUrl"] as? String ?? ""
        if tokenRequired && (token.isEmpty || streamURL.isEmpty) {
            throw self.sender.malformed(operation: operation, "the response has no TokenValue or StreamUrl", resource: resource)
        }
        return StartSessionResponse(sessionID: sessionID, tokenValue: token, streamURL: streamURL)
    }
}

/// What StartSession and ResumeSession return: where the data channel is and the token that opens it.
///
/// Its printed forms hide the token, which grants access to the session.
public struct StartSessionResponse: Sendable, Hashable {
    public var sessionID: String
    /// Sent once, in OpenDataChannel. Empty from ResumeSession when the session is over.
    public var tokenValue: String
    /// The `wss://ssmmessages…` URL, dialled verbatim.
    public var streamURL: String

    public init(sessionID: String, tokenValue: String, streamURL: String) {
        self.sessionID = sessionID
        self.tokenValue = tokenValue
        self.streamURL = streamURL
    }

    /// Whether ResumeSession said the session can no longer be resumed.
    public var isExpired: Bool { self.tokenValue.isEmpty }
}

extension StartSessionResponse: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String {
        "StartSessionResponse(sessionID: \(self.sessionID), tokenValue: \(self.tokenValue.isEmpty ? "<none>" : "<redacted>"), streamURL: \(self.streamURL))"
    }

    public var debugDescription: String { self.description }

    public var customMirror: Mirror {
        Mirror(
            self, children: ["sessionID": self.sessionID, "tokenValue": "<redacted>", "streamURL": self.streamURL],
            displayStyle: .struct)
    }
}

/// One managed node as DescribeInstanceInformation reports it.
public struct InstanceInformation: Sendable, Hashable {
    public var instanceID: String
    /// `Online`, `ConnectionLost` or `Inactive`.
    public var pingStatus: String
    public var platformType: String?
    public var platformName: String?
    public var agentVersion: String?
    public var computerName: String?
    public var ipAddress: String?
    /// `EC2Instance` or `ManagedInstance`.
    public var resourceType: String?
    /// The registration name of a hybrid node (`mi-…`).
    public var name: String?

    public init(
        instanceID: String, pingStatus: String, platformType: String? = nil, platformName: String? = nil,
        agentVersion: String? = nil, computerName: String? = nil, ipAddress: String? = nil,
        resourceType: String? = nil, name: String? = nil
    ) {
        self.instanceID = instanceID
        self.pingStatus = pingStatus
        self.platformType = platformType
        self.platformName = platformName
        self.agentVersion = agentVersion
        self.computerName = computerName
        self.ipAddress = ipAddress
        self.resourceType = resourceType
        self.name = name
    }
}
