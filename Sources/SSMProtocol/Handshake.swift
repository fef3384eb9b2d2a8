import NIOCore

/// Session type names as the agent announces them in the handshake.
public enum SessionTypeName {
    public static let port = "Port"
    public static let standardStream = "Standard_Stream"
    public static let interactiveCommands = "InteractiveCommands"
    public static let nonInteractiveCommands = "NonInteractiveCommands"
}

/// What the agent asks of the client before a session starts (PayloadType 5).
public struct HandshakeRequest: Hashable, Sendable, JSONPayload {
    public var agentVersion: String
    public var requestedClientActions: [RequestedClientAction]

    public init(agentVersion: String, requestedClientActions: [RequestedClientAction]) {
        self.agentVersion = agentVersion
        self.requestedClientActions = requestedClientActions
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "HandshakeRequest")
        var actions: [RequestedClientAction] = []
        let elements = (object.optional("RequestedClientActions")?.isNull ?? true) ? [] : try object.array("RequestedClientActions")
        for element in elements {
            actions.append(try RequestedClientAction(json: element))
        }
        self.init(agentVersion: try object.stringOrEmpty("AgentVersion"), requestedClientActions: actions)
    }

    public var json: JSONValue {
        .object([
            ("AgentVersion", .string(self.agentVersion)),
            ("RequestedClientActions", .array(self.requestedClientActions.map(\.json))),
        ])
    }

    /// The session type the agent announced, if any.
    public var sessionType: String? {
        for action in self.requestedClientActions {
            if case .sessionType(let name, _) = action { return name }
        }
        return nil
    }
}

public enum RequestedClientAction: Hashable, Sendable {
    /// `properties` is the resolved document `properties` object for Port, `null` otherwise.
    case sessionType(String, properties: JSONValue)
    case kmsEncryption(keyID: String, challenge: String)
    case unknown(actionType: String, parameters: JSONValue)

    public static let sessionTypeAction = "SessionType"
    public static let kmsEncryptionAction = "KMSEncryption"

    public var actionType: String {
        switch self {
        case .sessionType: Self.sessionTypeAction
        case .kmsEncryption: Self.kmsEncryptionAction
        case .unknown(let type, _): type
        }
    }

    init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "RequestedClientAction")
        let type = try object.string("ActionType")
        let parameters = object.optional("ActionParameters") ?? .null
        switch type {
        case Self.sessionTypeAction:
            let params = try JSONObjectReader(parameters, payload: "SessionType.ActionParameters")
            self = .sessionType(try params.string("SessionType"), properties: params.optional("Properties") ?? .null)
        case Self.kmsEncryptionAction:
            let params = try JSONObjectReader(parameters, payload: "KMSEncryption.ActionParameters")
            self = .kmsEncryption(keyID: try params.string("KMSKeyId"), challenge: try params.stringOrEmpty("Challenge"))
        default:
            self = .unknown(actionType: type, parameters: parameters)
        }
    }

    var json: JSONValue {
        let parameters: JSONValue
        switch self {
        case .sessionType(let name, let properties):
            parameters = .object([("SessionType", .string(name)), ("Properties", properties)])
        case .kmsEncryption(let keyID, let challenge):
            parameters = .object([("KMSKeyId", .string(keyID)), ("Challenge", .string(challenge))])
        case .unknown(_, let raw):
            parameters = raw
        }
        return .object([("ActionType", .string(self.actionType)), ("ActionParameters", parameters)])
    }
}

/// The client's answer to a HandshakeRequest (PayloadType 6): one processed action per requested one.
public struct HandshakeResponse: Hashable, Sendable, JSONPayload {
    public var clientVersion: String
    public var processedClientActions: [ProcessedClientAction]
    /// The error strings of the failed actions, or nil when none failed.
    public var errors: [String]?

    public init(clientVersion: String, processedClientActions: [ProcessedClientAction], errors: [String]? = nil) {
        self.clientVersion = clientVersion
        self.processedClientActions = processedClientActions
        self.errors = errors
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "HandshakeResponse")
        var actions: [ProcessedClientAction] = []
        let elements = (object.optional("ProcessedClientActions")?.isNull ?? true) ? [] : try object.array("ProcessedClientActions")
        for element in elements {
            actions.append(try ProcessedClientAction(json: element))
        }
        var errors: [String]?
        if let list = object.optional("Errors"), !list.isNull {
            guard case .array(let items) = list else { throw .wrongType("Errors", in: "HandshakeResponse", expected: "an array") }
            errors = items.compactMap(\.stringValue)
        }
        self.init(clientVersion: try object.stringOrEmpty("ClientVersion"), processedClientActions: actions, errors: errors)
    }

    public var json: JSONValue {
        .object([
            ("ClientVersion", .string(self.clientVersion)),
            ("ProcessedClientActions", .array(self.processedClientActions.map(\.json))),
            ("Errors", self.errors.map { .array($0.map { .string($0) }) } ?? .null),
        ])
    }
}

public struct ProcessedClientAction: Hashable, Sendable {
    public enum Status: Int, Hashable, Sendable {
        case success = 1
        case failed = 2
        case unsupported = 3
    }

    public var actionType: String
    /// Raw status: the agent treats anything other than 1 as failure.
    public var actionStatus: Int
    public var actionResult: JSONValue
    public var error: String

    public init(actionType: String, actionStatus: Status, actionResult: JSONValue = .null, error: String = "") {
        self.actionType = actionType
        self.actionStatus = actionStatus.rawValue
        self.actionResult = actionResult
        self.error = error
    }

    public var status: Status? { Status(rawValue: self.actionStatus) }

    /// The KMS action's result: the data key encrypted by KMS, base64.
    public static func kmsEncryptionSucceeded(cipherTextKey: String) -> ProcessedClientAction {
        ProcessedClientAction(
            actionType: RequestedClientAction.kmsEncryptionAction,
            actionStatus: .success,
            actionResult: .object([("KMSCipherTextKey", .string(cipherTextKey)), ("KMSCipherTextHash", .null)])
        )
    }

    init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "ProcessedClientAction")
        self.actionType = try object.string("ActionType")
        self.actionStatus = try object.integer("ActionStatus")
        self.actionResult = object.optional("ActionResult") ?? .null
        self.error = try object.stringOrEmpty("Error")
    }

    var json: JSONValue {
        .object([
            ("ActionType", .string(self.actionType)),
            ("ActionStatus", .integer(self.actionStatus)),
            ("ActionResult", self.actionResult),
            ("Error", .string(self.error)),
        ])
    }
}

/// The agent's end of the handshake (PayloadType 7).
public struct HandshakeComplete: Hashable, Sendable, JSONPayload {
    /// Nanoseconds (a Go `time.Duration`).
    public var handshakeTimeToComplete: Int64
    /// Shown to the user on its own line when non-empty.
    public var customerMessage: String

    public init(handshakeTimeToComplete: Int64, customerMessage: String = "") {
        self.handshakeTimeToComplete = handshakeTimeToComplete
        self.customerMessage = customerMessage
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "HandshakeComplete")
        self.init(
            handshakeTimeToComplete: try object.integer("HandshakeTimeToComplete"),
            customerMessage: try object.stringOrEmpty("CustomerMessage")
        )
    }

    public var json: JSONValue {
        .object([
            ("HandshakeTimeToComplete", .integer(self.handshakeTimeToComplete)),
            ("CustomerMessage", .string(self.customerMessage)),
        ])
    }
}

// MARK: - OpenDataChannel

/// The first (text) frame on a data-channel WebSocket, which carries the session token.
///
/// Its `description` redacts the token, so the value can be logged safely.
public struct OpenDataChannelInput: Hashable, Sendable, JSONPayload, CustomStringConvertible {
    public enum Role: Hashable, Sendable {
        /// The client sends its process-wide ClientId and its version.
        case client(clientID: String, clientVersion: String)
        /// The agent names its instance and always sends an empty ClientId.
        case agent(instanceID: String)
    }

    public var messageSchemaVersion: String
    public var requestID: String
    public var tokenValue: String
    public var role: Role

    public init(messageSchemaVersion: String = "1.0", requestID: String, tokenValue: String, role: Role) {
        self.messageSchemaVersion = messageSchemaVersion
        self.requestID = requestID
        self.tokenValue = tokenValue
        self.role = role
    }

    public init(json: JSONValue) throws(PayloadError) {
        let object = try JSONObjectReader(json, payload: "OpenDataChannelInput")
        let role: Role
        if let instance = object.optional("ClientInstanceId")?.stringValue, !instance.isEmpty {
            role = .agent(instanceID: instance)
        } else {
            role = .client(clientID: try object.stringOrEmpty("ClientId"), clientVersion: try object.stringOrEmpty("ClientVersion"))
        }
        self.init(
            messageSchemaVersion: try object.stringOrEmpty("MessageSchemaVersion"),
            requestID: try object.stringOrEmpty("RequestId"),
            tokenValue: try object.string("TokenValue"),
            role: role
        )
    }

    public var json: JSONValue {
        var members: [(String, JSONValue)] = [
            ("MessageSchemaVersion", .string(self.messageSchemaVersion)),
            ("RequestId", .string(self.requestID)),
            ("TokenValue", .string(self.tokenValue)),
        ]
        switch self.role {
        case .client(let clientID, let clientVersion):
            members.append(("ClientId", .string(clientID)))
            members.append(("ClientVersion", .string(clientVersion)))
        case .agent(let instanceID):
            members.append(("ClientInstanceId", .string(instanceID)))
            members.append(("ClientId", .string("")))
        }
        return .object(members)
    }

    public var description: String {
        "OpenDataChannelInput(requestID: \(self.requestID), role: \(self.role), token: <redacted \(self.tokenValue.utf8.count) bytes>)"
    }
}
