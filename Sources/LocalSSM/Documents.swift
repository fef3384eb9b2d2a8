import SSMProtocol

/// The Session Manager documents the emulator knows, and how StartSession parameters resolve
/// into the `properties` the agent's plugin (and the client, through the handshake) sees.
public struct SessionDocument: Sendable {
    public struct Parameter: Sendable {
        public var name: String
        /// nil: required.
        public var defaultValue: String?
    }

    public var name: String
    public var sessionType: String
    public var parameters: [Parameter]
    /// Property name → template; `{{ name }}` is replaced by the parameter's value.
    public var properties: [(String, PropertyTemplate)]

    public indirect enum PropertyTemplate: Sendable {
        case parameter(String)
        case literal(String)
        case bool(Bool)
        case object([(String, PropertyTemplate)])
    }

    public static let defaultShellDocument = "SSM-SessionManagerRunShell"

    public static let all: [SessionDocument] = [
        SessionDocument(
            name: "AWS-StartSSHSession", sessionType: SessionTypeName.port,
            parameters: [Parameter(name: "portNumber", defaultValue: "22")],
            properties: [("portNumber", .parameter("portNumber"))]),
        SessionDocument(
            name: "AWS-StartPortForwardingSession", sessionType: SessionTypeName.port,
            parameters: [Parameter(name: "portNumber", defaultValue: "80"), Parameter(name: "localPortNumber", defaultValue: "0")],
            properties: [
                ("portNumber", .parameter("portNumber")), ("type", .literal("LocalPortForwarding")),
                ("localPortNumber", .parameter("localPortNumber")),
            ]),
        SessionDocument(
            name: "AWS-StartPortForwardingSessionToRemoteHost", sessionType: SessionTypeName.port,
            parameters: [
                Parameter(name: "host", defaultValue: nil), Parameter(name: "portNumber", defaultValue: "80"),
                Parameter(name: "localPortNumber", defaultValue: "0"),
            ],
            properties: [
                ("host", .parameter("host")), ("portNumber", .parameter("portNumber")), ("type", .literal("LocalPortForwarding")),
                ("localPortNumber", .parameter("localPortNumber")),
            ]),
        SessionDocument(
            name: "AWS-StartInteractiveCommand", sessionType: SessionTypeName.interactiveCommands,
            parameters: [Parameter(name: "command", defaultValue: nil)],
            properties: [
                ("linux", .object([("commands", .parameter("command")), ("runAsElevated", .bool(false))])),
                ("macos", .object([("commands", .parameter("command")), ("runAsElevated", .bool(false))])),
            ]),
        SessionDocument(name: defaultShellDocument, sessionType: SessionTypeName.standardStream, parameters: [], properties: []),
    ]

    public static func named(_ name: String) -> SessionDocument? { self.all.first { $0.name == name } }

    /// Why parameters were refused, in the words the API returns.
    public struct ParameterError: Error, Sendable {
        public var message: String
    }

    /// Scalar parameter values with defaults applied; unknown and missing parameters are refused.
    public func resolve(_ given: [String: [String]]) throws(ParameterError) -> [String: String] {
        var values: [String: String] = [:]
        for (name, list) in given {
            guard self.parameters.contains(where: { $0.name == name }) else {
                throw ParameterError(message: "Parameter \"\(name)\" is not defined in document \(self.name).")
            }
            guard list.count == 1, let value = list.first else {
                throw ParameterError(message: "Parameter \"\(name)\" must have exactly one value.")
            }
            values[name] = value
        }
        for parameter in self.parameters where values[parameter.name] == nil {
            guard let fallback = parameter.defaultValue else {
                throw ParameterError(message: "Parameter \"\(parameter.name)\" is required by document \(self.name).")
            }
            values[parameter.name] = fallback
        }
        return values
    }

    /// The resolved `properties` object (string values), as the handshake carries it.
    public func properties(with values: [String: String]) -> JSONValue {
        func render(_ template: PropertyTemplate) -> JSONValue {
            switch template {
            case .parameter(let name): .string(values[name] ?? "")
            case .literal(let text): .string(text)
            case .bool(let flag): .bool(flag)
            case .object(let members): .object(members.map { ($0.0, render($0.1)) })
            }
        }
        guard !self.properties.isEmpty else { return .null }
        return .object(self.properties.map { ($0.0, render($0.1)) })
    }
}
