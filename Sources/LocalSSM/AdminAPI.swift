import NIOCore
import NIOHTTP1
import SSMProtocol
import Yams

/// The emulator's control endpoint: faults changed at run time, one-off WebSocket drops, agent
/// kills. JSON in and out, under `/admin/` on the emulator's port, answered for loopback peers only.
///
/// | request | effect |
/// |---|---|
/// | `GET /admin/faults` | the fault configuration in force |
/// | `PUT /admin/faults` | replaces it (same keys as the file's `faults:`) |
/// | `DELETE /admin/faults` | no faults |
/// | `PUT`/`DELETE /admin/faults/global` | the global spec |
/// | `PUT`/`DELETE /admin/faults/sessions/<id>` | one session's spec |
/// | `GET /admin/sessions/<id>` | owner, WebSocket connections per side, frame-fault counters |
/// | `POST /admin/sessions/<id>/drop` `{"side":"client"}` | closes that side's WebSocket now |
/// | `POST /admin/agents/<instance>/kill` `{"restartAfterMs":1000}` | kills the agent; restarts it after the delay if given |
struct AdminAPI {
    let server: LocalSSMServer

    func handle(_ request: LocalSSMServer.Request) async -> SSMAPI.Response {
        guard let peer = request.peer, Self.isLoopback(peer) else {
            return SSMAPI.failure(AWSAPIError(status: 403, code: "AccessDeniedException", message: "The admin endpoint answers loopback clients only."))
        }
        let route = Route(request.path.split(separator: "/").dropFirst().map(String.init))
        do throws(any Error) {
            switch (request.method, route) {
            case (.GET, .faults?):
                return self.faults()
            case (.PUT, .faults?):
                let configuration = try FaultConfiguration.read(try Self.body(request), key: "faults", reader: Self.reader)
                self.server.mgs.faults.update { $0 = configuration }
                return self.faults()
            case (.DELETE, .faults?):
                self.server.mgs.faults.update { $0 = FaultConfiguration(seed: $0.seed) }
                return self.faults()
            case (.PUT, .globalFaults?):
                let spec = try FaultSpec.read(try Self.body(request), key: "global", reader: Self.reader)
                self.server.mgs.faults.update { $0.global = spec }
                return self.faults()
            case (.DELETE, .globalFaults?):
                self.server.mgs.faults.update { $0.global = nil }
                return self.faults()
            case (.PUT, .sessionFaults(let id)?):
                let spec = try FaultSpec.read(try Self.body(request), key: "sessions.\(id)", reader: Self.reader)
                self.server.mgs.faults.update { $0.sessions[id] = spec }
                return self.faults()
            case (.DELETE, .sessionFaults(let id)?):
                self.server.mgs.faults.update { $0.sessions[id] = nil }
                return self.faults()
            case (.GET, .session(let id)?):
                // Who started it (what CloudTrail would name) and, while its relay is open, the faults applied.
                let session = self.server.registry.session(id)
                let relay = self.server.mgs.relay(id)
                guard session != nil || relay != nil else { throw AWSAPIError.doesNotExist("No session \(id).") }
                var fields: [(String, JSONValue)] = [("SessionId", .string(id))]
                if let session {
                    fields.append(("Owner", .string(session.owner)))
                    fields.append(("SourceIdentity", session.sourceIdentity.map(JSONValue.string) ?? .null))
                }
                if let relay {
                    // Each side's WebSockets for the session so far: more than one means it reconnected.
                    let attaches = relay.attachCounts
                    fields += [("ClientConnections", .integer(attaches.client)), ("AgentConnections", .integer(attaches.agent))]
                }
                if let counts = relay?.faultCounts {
                    fields += [
                        ("dropped", .integer(counts.dropped)), ("duplicated", .integer(counts.duplicated)),
                        ("reordered", .integer(counts.reordered)), ("corrupted", .integer(counts.corrupted)),
                    ]
                }
                return SSMAPI.ok(.object(fields))
            case (.POST, .dropWebSocket(let id)?):
                let body = try Self.body(request)
                let entries = try Self.reader.mapping(body, key: "")
                try Self.reader.allowOnly(["side"], in: entries, key: "")
                let side = try entries["side"].map { node throws(ConfigurationError) in try Self.reader.string(node, key: "side") }
                guard let side, let role = FaultSpec.WebSocketDrop.Side(rawValue: side) else {
                    throw AWSAPIError.validation("'side' must be client or agent.")
                }
                guard self.server.mgs.dropWebSocket(sessionID: id, client: role == .client) else {
                    throw AWSAPIError.doesNotExist("Session \(id) has no \(side) WebSocket open.")
                }
                return SSMAPI.ok(.object([("SessionId", .string(id)), ("dropped", .string(side))]))
            case (.POST, .killAgent(let id)?):
                let body = try Self.body(request)
                let entries = try Self.reader.mapping(body, key: "")
                try Self.reader.allowOnly(["restartAfterMs"], in: entries, key: "")
                let restart = try entries["restartAfterMs"].flatMap { node throws(ConfigurationError) -> Int? in
                    Self.reader.isNull(node) ? nil : try Self.reader.integer(node, key: "restartAfterMs", in: 0...3_600_000)
                }
                let killer = self.server.agentKiller.withLock { $0 }
                guard let killer, await killer(id, restart.map { .milliseconds(Int64($0)) }) else {
                    throw AWSAPIError.doesNotExist("Instance \(id) has no running agent.")
                }
                return SSMAPI.ok(.object([("InstanceId", .string(id)), ("restartAfterMs", restart.map { .integer($0) } ?? .null)]))
            default:
                return SSMAPI.failure(AWSAPIError(status: 404, code: "UnknownOperationException", message: "No admin operation at \(request.method) \(request.path)."))
            }
        } catch let error as ConfigurationError {
            return SSMAPI.failure(.validation(error.description))
        } catch let error as AWSAPIError {
            return SSMAPI.failure(error)
        } catch {
            return SSMAPI.failure(.validation("\(error)"))
        }
    }

    enum Route {
        case faults, globalFaults, sessionFaults(String), session(String), dropWebSocket(String), killAgent(String)

        /// From the path's parts after `admin`.
        init?(_ parts: [String]) {
            switch parts.count {
            case 1 where parts[0] == "faults": self = .faults
            case 2 where parts[0] == "faults" && parts[1] == "global": self = .globalFaults
            case 2 where parts[0] == "sessions": self = .session(parts[1])
            case 3 where parts[0] == "faults" && parts[1] == "sessions": self = .sessionFaults(parts[2])
            case 3 where parts[0] == "sessions" && parts[2] == "drop": self = .dropWebSocket(parts[1])
            case 3 where parts[0] == "agents" && parts[2] == "kill": self = .killAgent(parts[1])
            default: return nil
            }
        }
    }

    func faults() -> SSMAPI.Response {
        SSMAPI.ok(self.server.mgs.faults.current.json)
    }

    static let reader = YAMLReader(file: "request body")

    /// The JSON body as a YAML node (JSON is YAML), so the file's validation and messages apply.
    static func body(_ request: LocalSSMServer.Request) throws(ConfigurationError) -> Node {
        let text = String(buffer: request.body)
        do {
            guard let node = try Yams.compose(yaml: text.isEmpty ? "{}" : text) else { return Node.mapping([:]) }
            return node
        } catch {
            throw ConfigurationError(file: "request body", key: "", problem: "is not valid JSON: \(error)")
        }
    }

    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4(let v4):
            return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6:
            guard let ip = address.ipAddress else { return false }
            return ip == "::1" || ip.hasPrefix("::ffff:127.")
        case .unixDomainSocket:
            return true
        }
    }
}
