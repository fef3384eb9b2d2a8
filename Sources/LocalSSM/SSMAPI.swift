import Foundation
import NIOCore
import SSMProtocol

/// The SSM JSON 1.1 operations and the EC2 DescribeInstances query the emulator answers.
///
/// Requests arrive already authenticated (SigV4); this type turns them into AWS-shaped
/// answers and drives MGS: StartSession tells the instance's agent over its control channel.
public struct SSMAPI: Sendable {
    let configuration: LocalSSMConfiguration
    let registry: SessionRegistry
    let mgs: MGS
    /// The base of every StreamUrl: `ws://host:port`.
    let streamBaseURL: String

    public struct Response: Sendable {
        public var status: Int
        public var contentType: String
        public var body: ByteBuffer
    }

    static func ok(_ json: JSONValue) -> Response {
        Response(status: 200, contentType: "application/x-amz-json-1.1", body: json.encoded)
    }

    static func failure(_ error: AWSAPIError) -> Response {
        Response(status: error.status, contentType: "application/x-amz-json-1.1", body: error.jsonBody)
    }

    /// `operation` is the part of `X-Amz-Target` after `AmazonSSM.`.
    func handle(operation: String, body: ByteBuffer, caller: LocalSSMConfiguration.Credential) async -> Response {
        let request: JSONValue
        do {
            request = body.readableBytes == 0 ? .object([]) : try JSONValue(parsing: body)
        } catch {
            return Self.failure(.serialization("The request body is not valid JSON: \(error.detail)"))
        }
        guard case .object = request else { return Self.failure(.serialization("The request body must be a JSON object.")) }
        do {
            switch operation {
            case "StartSession": return Self.ok(try await self.startSession(request, caller: caller))
            case "ResumeSession": return Self.ok(try self.resumeSession(request))
            case "TerminateSession": return Self.ok(try self.terminateSession(request))
            case "DescribeInstanceInformation": return Self.ok(try self.describeInstanceInformation(request))
            case "DescribeSessions": return Self.ok(try self.describeSessions(request))
            default: return Self.failure(.unknownOperation("AmazonSSM.\(operation)"))
            }
        } catch let error as AWSAPIError {
            return Self.failure(error)
        } catch {
            return Self.failure(AWSAPIError(status: 500, code: "InternalServerError", message: "\(error)"))
        }
    }

    func requiredString(_ request: JSONValue, _ name: String) throws -> String {
        guard let member = request[name], !member.isNull else {
            throw AWSAPIError.validation("1 validation error detected: Value null at '\(name.prefix(1).lowercased() + name.dropFirst())' failed to satisfy constraint: Member must not be null")
        }
        guard let text = member.stringValue else { throw AWSAPIError.serialization("\(name) must be a string.") }
        return text
    }

    // MARK: StartSession

    func startSession(_ request: JSONValue, caller: LocalSSMConfiguration.Credential) async throws -> JSONValue {
        let target = try self.requiredString(request, "Target")
        let documentName = request["DocumentName"]?.stringValue ?? SessionDocument.defaultShellDocument
        var given: [String: [String]] = [:]
        if let parameters = request["Parameters"], !parameters.isNull {
            guard case .object(let members) = parameters else { throw AWSAPIError.serialization("Parameters must be a map of string lists.") }
            for (name, value) in members {
                guard case .array(let items) = value else {
                    throw AWSAPIError.serialization("Parameters.\(name) must be a list of strings.")
                }
                given[name] = items.compactMap(\.stringValue)
            }
        }
        let delay = self.configuration.limits.startSessionDelayMilliseconds
        if delay > 0 { try? await Task.sleep(for: .milliseconds(delay)) }  // the service's own start-up latency

        let region = self.configuration.region
        let account = self.configuration.accountID
        if let allowed = caller.allowedDocuments, !allowed.contains(documentName) {
            throw AWSAPIError.accessDenied(
                user: caller.userName, account: account, action: "ssm:StartSession",
                resource: "arn:aws:ssm:\(region)::document/\(documentName)")
        }
        guard let document = SessionDocument.named(documentName) else { throw AWSAPIError.invalidDocument(documentName) }
        let values: [String: String]
        do {
            values = try document.resolve(given)
        } catch {
            throw AWSAPIError.invalidParameters(error.message)
        }
        guard let instance = self.configuration.instance(target), instance.pingStatus == .online, self.mgs.isAgentConnected(target) else {
            throw AWSAPIError.targetNotConnected(target)
        }
        if let cap = self.configuration.limits.maximumSessionsPerInstance, self.registry.activeSessionCount(target: target) >= cap {
            throw AWSAPIError(code: "ThrottlingException", message: "Rate exceeded: \(target) already has \(cap) sessions.")
        }
        let sessionID = SessionRegistry.sessionID(for: caller.userName)
        let token = SessionRegistry.randomToken()
        let session = SessionRegistry.Session(
            id: sessionID, target: target, documentName: documentName, sessionType: document.sessionType,
            parameters: values, properties: document.properties(with: values),
            owner: caller.principalARN ?? "arn:aws:iam::\(account):user/\(caller.userName)", reason: request["Reason"]?.stringValue,
            status: .connecting, startDate: Date(), endDate: nil, clientTokens: [token], agentTokens: [],
            sourceIdentity: caller.sourceIdentity)
        self.registry.create(session)
        guard self.mgs.deliverStartSession(session, document: document) else {
            self.registry.terminate(sessionID)
            throw AWSAPIError.targetNotConnected(target)
        }
        return .object([
            ("SessionId", .string(sessionID)),
            ("TokenValue", .string(token)),
            ("StreamUrl", .string(self.streamURL(sessionID))),
        ])
    }

    func streamURL(_ sessionID: String) -> String {
        "\(self.streamBaseURL)/v1/data-channel/\(sessionID)?role=publish_subscribe"
    }

    // MARK: ResumeSession / TerminateSession

    func resumeSession(_ request: JSONValue) throws -> JSONValue {
        let id = try self.requiredString(request, "SessionId")
        guard let session = self.registry.session(id) else {
            throw AWSAPIError.doesNotExist("Session with id \(id) does not exist.")
        }
        guard let token = self.registry.renewClientToken(session.id) else {
            // An ended session resumes to no token: the official client then reports a time-out.
            return .object([("SessionId", .string(id))])
        }
        return .object([("SessionId", .string(id)), ("TokenValue", .string(token)), ("StreamUrl", .string(self.streamURL(id)))])
    }

    func terminateSession(_ request: JSONValue) throws -> JSONValue {
        let id = try self.requiredString(request, "SessionId")
        if self.registry.terminate(id) {
            self.mgs.closeSession(id, output: "")
        }
        return .object([("SessionId", .string(id))])
    }

    // MARK: Describe*

    func describeInstanceInformation(_ request: JSONValue) throws -> JSONValue {
        var instances = self.configuration.instances
        var filters: [(String, [String])] = []
        if case .array(let list)? = request["Filters"] {
            for filter in list {
                guard let key = filter["Key"]?.stringValue, case .array(let values)? = filter["Values"] else {
                    throw AWSAPIError.validation("Each filter needs a Key and Values.")
                }
                filters.append((key, values.compactMap(\.stringValue)))
            }
        }
        if case .array(let list)? = request["InstanceInformationFilterList"] {
            for filter in list {
                guard let key = filter["key"]?.stringValue, case .array(let values)? = filter["valueSet"] else {
                    throw AWSAPIError.validation("Each filter needs a key and valueSet.")
                }
                filters.append((key, values.compactMap(\.stringValue)))
            }
        }
        for (key, values) in filters {
            switch key {
            case "InstanceIds": instances = instances.filter { values.contains($0.id) }
            case "PingStatus": instances = instances.filter { values.contains(self.pingStatus(of: $0)) }
            case "PlatformTypes": instances = instances.filter { values.contains($0.platformType) }
            case "ResourceType": instances = instances.filter { values.contains($0.isManagedInstance ? "ManagedInstance" : "EC2Instance") }
            case "AgentVersion": instances = instances.filter { values.contains($0.agentVersion) }
            default:
                if key.hasPrefix("tag:") {
                    let tag = String(key.dropFirst(4))
                    instances = instances.filter { $0.tags[tag].map(values.contains) ?? false }
                } else if key == "tag-key" {
                    instances = instances.filter { instance in values.contains { instance.tags[$0] != nil } }
                } else {
                    throw AWSAPIError(code: "InvalidFilterKey", message: "The filter key \(key) is not valid.")
                }
            }
        }
        let now = Date().timeIntervalSince1970
        let list: [JSONValue] = instances.map { instance in
            var members: [(String, JSONValue)] = [
                ("InstanceId", .string(instance.id)),
                ("PingStatus", .string(self.pingStatus(of: instance))),
                ("LastPingDateTime", .number(String(format: "%.3f", now))),
                ("AgentVersion", .string(instance.agentVersion)),
                ("IsLatestVersion", .bool(instance.agentVersion == LocalSSMConfiguration.currentAgentVersion)),
                ("PlatformType", .string(instance.platformType)),
                ("PlatformName", .string(instance.platformName)),
                ("PlatformVersion", .string(instance.platformVersion)),
                ("ResourceType", .string(instance.isManagedInstance ? "ManagedInstance" : "EC2Instance")),
                ("IPAddress", .string(instance.ipAddress)),
                ("ComputerName", .string(instance.name ?? instance.id)),
            ]
            if instance.isManagedInstance, let name = instance.name { members.append(("Name", .string(name))) }
            return .object(members)
        }
        return .object([("InstanceInformationList", .array(list))])
    }

    /// Online only while the instance's agent holds its control channel, as on AWS.
    func pingStatus(of instance: LocalSSMConfiguration.Instance) -> String {
        guard instance.pingStatus == .online else { return instance.pingStatus.rawValue }
        return self.mgs.isAgentConnected(instance.id) ? "Online" : "ConnectionLost"
    }

    func describeSessions(_ request: JSONValue) throws -> JSONValue {
        let state = try self.requiredString(request, "State")
        guard state == "Active" || state == "History" else {
            throw AWSAPIError.validation("1 validation error detected: Value '\(state)' at 'state' failed to satisfy constraint: Member must satisfy enum value set: [Active, History]")
        }
        var sessions = self.registry.sessions.filter { (state == "Active") == ($0.status != .terminated) }
        if case .array(let filters)? = request["Filters"] {
            for filter in filters {
                guard let key = filter["key"]?.stringValue, let value = filter["value"]?.stringValue else { continue }
                switch key {
                case "Target": sessions = sessions.filter { $0.target == value }
                case "Owner": sessions = sessions.filter { $0.owner == value }
                case "SessionId": sessions = sessions.filter { $0.id == value }
                case "Status": sessions = sessions.filter { $0.status.rawValue == value }
                default: throw AWSAPIError(code: "InvalidFilterKey", message: "The filter key \(key) is not valid.")
                }
            }
        }
        let list: [JSONValue] = sessions.sorted { $0.startDate < $1.startDate }.map { session in
            var members: [(String, JSONValue)] = [
                ("SessionId", .string(session.id)),
                ("Target", .string(session.target)),
                ("Status", .string(session.status.rawValue)),
                ("StartDate", .number(String(format: "%.3f", session.startDate.timeIntervalSince1970))),
                ("DocumentName", .string(session.documentName)),
                ("Owner", .string(session.owner)),
            ]
            if let end = session.endDate { members.append(("EndDate", .number(String(format: "%.3f", end.timeIntervalSince1970)))) }
            if let reason = session.reason { members.append(("Reason", .string(reason))) }
            return .object(members)
        }
        return .object([("Sessions", .array(list))])
    }

    // MARK: EC2 DescribeInstances (Query protocol)

    func describeInstances(form: [(String, String)]) -> Response {
        var ids: [String] = []
        var filters: [String: (name: String, values: [String])] = [:]
        for (key, value) in form {
            if key.hasPrefix("InstanceId.") { ids.append(value) }
            let parts = key.split(separator: ".")
            if parts.count >= 3, parts[0] == "Filter" {
                let index = String(parts[1])
                var filter = filters[index] ?? ("", [])
                if parts[2] == "Name" { filter.name = value }
                if parts[2] == "Value" { filter.values.append(value) }
                filters[index] = filter
            }
        }
        var instances = self.configuration.instances.filter { !$0.isManagedInstance }
        if !ids.isEmpty {
            if let missing = ids.first(where: { id in !instances.contains { $0.id == id } }) {
                let error = AWSAPIError(code: "InvalidInstanceID.NotFound", message: "The instance ID '\(missing)' does not exist")
                return Response(status: 400, contentType: "text/xml", body: error.ec2XMLBody(requestID: UUID().uuidString.lowercased()))
            }
            instances = instances.filter { ids.contains($0.id) }
        }
        for filter in filters.values {
            if filter.name.hasPrefix("tag:") {
                let tag = String(filter.name.dropFirst(4))
                instances = instances.filter { instance in
                    guard let value = instance.tags[tag] else { return false }
                    return filter.values.contains { Self.wildcardMatch(pattern: $0, value) }
                }
            } else if filter.name == "instance-id" {
                instances = instances.filter { filter.values.contains($0.id) }
            } else if filter.name == "instance-state-name" {
                instances = instances.filter { _ in filter.values.contains("running") }
            }
        }
        var items = ""
        for instance in instances {
            let tags = instance.tags.sorted { $0.key < $1.key }
                .map { "<item><key>\(xmlEscape($0.key))</key><value>\(xmlEscape($0.value))</value></item>" }.joined()
            items += """
                <item><reservationId>r-\(instance.id.dropFirst(2))</reservationId><ownerId>\(self.configuration.accountID)</ownerId><groupSet/>\
                <instancesSet><item><instanceId>\(instance.id)</instanceId><imageId>ami-0123456789abcdef0</imageId>\
                <instanceState><code>16</code><name>running</name></instanceState><privateDnsName>ip-127-0-0-1.ec2.internal</privateDnsName>\
                <dnsName></dnsName><instanceType>t3.micro</instanceType><privateIpAddress>\(instance.ipAddress)</privateIpAddress>\
                <platformDetails>Linux/UNIX</platformDetails><tagSet>\(tags)</tagSet></item></instancesSet></item>
                """
        }
        let xml = """
            <?xml version="1.0" encoding="UTF-8"?>
            <DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>\(UUID().uuidString.lowercased())</requestId><reservationSet>\(items)</reservationSet></DescribeInstancesResponse>
            """
        return Response(status: 200, contentType: "text/xml;charset=UTF-8", body: ByteBuffer(string: xml))
    }

    /// EC2 filter values accept `*` and `?` wildcards.
    static func wildcardMatch(pattern: String, _ value: String) -> Bool {
        let p = Array(pattern), v = Array(value)
        var memo = [[Bool?]](repeating: [Bool?](repeating: nil, count: v.count + 1), count: p.count + 1)
        func match(_ i: Int, _ j: Int) -> Bool {
            if let known = memo[i][j] { return known }
            let result: Bool
            if i == p.count {
                result = j == v.count
            } else if p[i] == "*" {
                result = match(i + 1, j) || (j < v.count && match(i, j + 1))
            } else {
                result = j < v.count && (p[i] == "?" || p[i] == v[j]) && match(i + 1, j + 1)
            }
            memo[i][j] = result
            return result
        }
        return match(0, 0)
    }
}
