import AsyncHTTPClient
import Foundation

/// EC2 DescribeInstances (Query protocol, XML), for turning `Name` tags into instance ids.
public struct EC2Client: Sendable {
    let sender: AWSRequestSender
    static let apiVersion = "2016-11-15"

    public init(configuration: AWSClientConfiguration, credentials: any AWSCredentialProvider, httpClient: HTTPClient) {
        self.sender = AWSRequestSender(
            service: "ec2", endpoint: \.ec2, configuration: configuration, credentials: credentials, httpClient: httpClient)
    }

    /// Instances matching ids and filters (all pages).
    /// - Parameters:
    ///   - instanceIDs: empty means any.
    ///   - filters: EC2 filters such as `("tag:Name", ["web-*"])` or `("instance-state-name", ["running"])`.
    public func describeInstances(
        instanceIDs: [String], filters: [(name: String, values: [String])]
    ) async throws -> [EC2Instance] {
        var instances: [EC2Instance] = []
        var nextToken: String?
        var pages = 0
        repeat {
            var parameters: [(String, String)] = []
            for (index, id) in instanceIDs.enumerated() { parameters.append(("InstanceId.\(index + 1)", id)) }
            for (index, filter) in filters.enumerated() {
                parameters.append(("Filter.\(index + 1).Name", filter.name))
                for (valueIndex, value) in filter.values.enumerated() {
                    parameters.append(("Filter.\(index + 1).Value.\(valueIndex + 1)", value))
                }
            }
            // MaxResults cannot be combined with InstanceId (the API rejects it).
            if instanceIDs.isEmpty { parameters.append(("MaxResults", "1000")) }
            if let nextToken { parameters.append(("NextToken", nextToken)) }
            let resource = instanceIDs.isEmpty ? nil : instanceIDs.joined(separator: ", ")
            let root = try await self.sender.query(
                action: "DescribeInstances", version: Self.apiVersion, parameters: parameters, resource: resource)
            for reservation in root.child("reservationSet")?.children("item") ?? [] {
                for item in reservation.child("instancesSet")?.children("item") ?? [] {
                    guard let id = item.child("instanceId")?.text else { continue }
                    var tags: [String: String] = [:]
                    for tag in item.child("tagSet")?.children("item") ?? [] {
                        if let key = tag.child("key")?.text { tags[key] = tag.child("value")?.text ?? "" }
                    }
                    instances.append(
                        EC2Instance(
                            instanceID: id, state: item["instanceState", "name"]?.text ?? "", tags: tags,
                            privateIPAddress: item.child("privateIpAddress")?.text.nilIfEmpty,
                            platformDetails: item.child("platformDetails")?.text.nilIfEmpty))
                }
            }
            nextToken = root.child("nextToken")?.text.nilIfEmpty
            pages += 1
        } while nextToken != nil && pages < SSMClient.maximumPages
        return instances
    }
}

/// An EC2 instance as far as routing needs it.
public struct EC2Instance: Sendable, Hashable {
    public var instanceID: String
    /// `pending`, `running`, `stopping`, `stopped`…
    public var state: String
    public var tags: [String: String]
    public var privateIPAddress: String?
    public var platformDetails: String?

    public init(
        instanceID: String, state: String, tags: [String: String], privateIPAddress: String? = nil,
        platformDetails: String? = nil
    ) {
        self.instanceID = instanceID
        self.state = state
        self.tags = tags
        self.privateIPAddress = privateIPAddress
        self.platformDetails = platformDetails
    }

    /// The `Name` tag.
    public var name: String? { self.tags["Name"] }
}

extension String {
    var nilIfEmpty: String? { self.isEmpty ? nil : self }
}
