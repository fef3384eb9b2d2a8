import NIOCore
import Testing

@testable import SSMProtocol

@Suite("Payloads")
struct PayloadTests {
    static func payload(_ id: String) throws -> ByteBuffer {
        ByteBuffer(hex: try Vectors.agentMessageCase(id)["payload_hex"] as! String)
    }

    /// Decoding then encoding a typed payload must give the official bytes back.
    func assertRoundTrip<P: JSONPayload & Equatable>(_ type: P.Type, _ id: String) throws -> P {
        let bytes = try Self.payload(id)
        let value = try P(decoding: bytes)
        #expect(value.encoded() == bytes, "\(id): \(String(buffer: value.encoded())) != \(String(buffer: bytes))")
        #expect(try P(decoding: value.encoded()) == value)
        return value
    }

    @Test func acknowledgements() throws {
        let client = try self.assertRoundTrip(Acknowledgement.self, "client_ack")
        #expect(client.acknowledgedMessageType == .outputStreamData)
        #expect(client.acknowledgedSequenceNumber == 0)
        #expect(client.acknowledgedMessageID == MessageID("9c4d2b7e-1f3a-4e5b-8c6d-0a1b2c3d4e5f"))
        let agent = try self.assertRoundTrip(Acknowledgement.self, "agent_ack")
        #expect(agent.acknowledgedMessageType == .inputStreamData)

        // The direct writer used on the hot path produces the same bytes as the JSON tree.
        var direct = ByteBuffer()
        agent.write(into: &direct)
        #expect(direct == agent.encoded())

        // Built from the message it acknowledges.
        let acked = try AgentMessage.decode(ByteBuffer(hex: try Vectors.agentMessageCase("client_input_keystrokes")["serialized_hex"] as! String))
        #expect(Acknowledgement(acknowledging: acked) == agent)
    }

    @Test func handshake() throws {
        let port = try self.assertRoundTrip(HandshakeRequest.self, "agent_handshake_request_port")
        #expect(port.agentVersion == "3.3.987.0")
        #expect(port.sessionType == "Port")
        guard case .sessionType(_, let properties) = port.requestedClientActions.first else {
            Issue.record("first action is not SessionType")
            return
        }
        #expect(properties["type"]?.stringValue == "LocalPortForwarding")
        #expect(properties["portNumber"]?.stringValue == "22")

        let kms = try self.assertRoundTrip(HandshakeRequest.self, "agent_handshake_request_shell_kms")
        #expect(kms.sessionType == "Standard_Stream")
        #expect(kms.requestedClientActions.count == 2)
        guard case .kmsEncryption(let keyID, let challenge) = kms.requestedClientActions[1] else {
            Issue.record("second action is not KMSEncryption")
            return
        }
        #expect(keyID.hasPrefix("arn:aws:kms:us-east-1:"))
        #expect(challenge == "q83vEjRWeJq83vEjRWeJqw==")

        let response = try self.assertRoundTrip(HandshakeResponse.self, "client_handshake_response")
        #expect(response.clientVersion == "1.2.650.0")
        #expect(response.errors == nil)
        #expect(response.processedClientActions.first?.status == .success)
        let built = HandshakeResponse(
            clientVersion: "1.2.650.0",
            processedClientActions: [ProcessedClientAction(actionType: "SessionType", actionStatus: .success)]
        )
        #expect(built.encoded() == (try Self.payload("client_handshake_response")))

        let complete = try self.assertRoundTrip(HandshakeComplete.self, "agent_handshake_complete")
        #expect(complete.handshakeTimeToComplete == 152_000_000)
        #expect(complete.customerMessage == "")
    }

    @Test func encryptionChallenge() throws {
        _ = try self.assertRoundTrip(EncryptionChallenge.self, "agent_enc_challenge_request")
        _ = try self.assertRoundTrip(EncryptionChallenge.self, "client_enc_challenge_response")
    }

    @Test func channelClosedAndSessionState() throws {
        let closed = try self.assertRoundTrip(ChannelClosed.self, "mgs_channel_closed")
        #expect(closed.sessionID == "alice-0a1b2c3d4e5f67890")
        #expect(closed.output == "")
        let withOutput = try self.assertRoundTrip(ChannelClosed.self, "mgs_channel_closed_with_output")
        #expect(withOutput.output == "Session is terminated by the user.")
        let state = try self.assertRoundTrip(AgentSessionState.self, "agent_session_state_connected")
        #expect(state.sessionState == AgentSessionState.connected)
    }

    @Test func terminalSize() throws {
        let size = try self.assertRoundTrip(TerminalSize.self, "client_input_size")
        #expect(size == TerminalSize(columns: 120, rows: 40))
        #expect(String(buffer: TerminalSize.fallback.encoded()) == #"{"cols":300,"rows":100}"#)
        #expect(throws: PayloadError.self) { try TerminalSize(decoding: ByteBuffer(string: #"{"cols":-1,"rows":2}"#)) }
    }

    @Test func flagsAndExitCode() throws {
        #expect(try PortFlag(decoding: Self.payload("client_flag_disconnect_to_port")) == .disconnectToPort)
        #expect(try PortFlag(decoding: Self.payload("client_flag_terminate_session")) == .terminateSession)
        #expect(try PortFlag(decoding: Self.payload("agent_flag_connect_to_port_error")) == .connectToPortError)
        for flag in PortFlag.allCases {
            #expect(try PortFlag(decoding: flag.encoded()) == flag)
        }
        #expect(PortFlag.terminateSession.encoded() == (try Self.payload("client_flag_terminate_session")))
        let short = #expect(throws: PayloadError.self) { try PortFlag(decoding: ByteBuffer(bytes: [0, 0])) }
        #expect(short?.code == .truncated)
        let unknown = #expect(throws: PayloadError.self) { try PortFlag(decoding: ByteBuffer(bytes: [0, 0, 0, 9])) }
        #expect(unknown?.code == .invalidValue)

        #expect(try ExitCode(decoding: Self.payload("agent_exit_code")) == ExitCode(0))
        #expect(ExitCode(0).encoded() == (try Self.payload("agent_exit_code")))
        #expect(try ExitCode(decoding: ExitCode(-3).encoded()).value == -3)
        #expect(throws: PayloadError.self) { try ExitCode(decoding: ByteBuffer(string: "EXIT_CODE: x")) }
    }

    @Test func openDataChannel() throws {
        let client = OpenDataChannelInput(
            requestID: "396baab2-9d2a-49b5-8a2f-17bae6f1d235", tokenValue: "secret-token",
            role: .client(clientID: "c1", clientVersion: "1.2.650.0"))
        #expect(
            client.json.text
                == #"{"MessageSchemaVersion":"1.0","RequestId":"396baab2-9d2a-49b5-8a2f-17bae6f1d235","TokenValue":"secret-token","ClientId":"c1","ClientVersion":"1.2.650.0"}"#
        )
        #expect(!client.description.contains("secret-token"))
        #expect(!String(describing: client).contains("secret-token"))

        // The agent's frame exactly as recorded in the port_mux transcript.
        let agentText = #"{"MessageSchemaVersion":"1.0","RequestId":"396baab2-9d2a-49b5-8a2f-17bae6f1d235","TokenValue":"agent-data-token","ClientInstanceId":"i-0123456789abcdef0","ClientId":""}"#
        let agent = try OpenDataChannelInput(decoding: ByteBuffer(string: agentText))
        #expect(agent.role == .agent(instanceID: "i-0123456789abcdef0"))
        #expect(agent.json.text == agentText)
    }

    @Test func errorsNameTheField() throws {
        let missing = #expect(throws: PayloadError.self) {
            try Acknowledgement(decoding: ByteBuffer(string: #"{"AcknowledgedMessageType":"input_stream_data"}"#))
        }
        #expect(missing?.code == .missingField)
        #expect(missing?.description.contains("AcknowledgedMessageId") == true)
        let notObject = #expect(throws: PayloadError.self) { try HandshakeComplete(decoding: ByteBuffer(string: "[1]")) }
        #expect(notObject?.code == .wrongType)
        let malformed = #expect(throws: PayloadError.self) { try HandshakeRequest(decoding: ByteBuffer(string: #"{"AgentVersion":"#)) }
        #expect(malformed?.code == .malformedJSON)
    }
}

@Suite("JSON")
struct JSONTests {
    @Test func goStyleEscaping() throws {
        let value = JSONValue.string("a<b>&\"\\\n\r\t\u{01}\u{2028}é")
        #expect(value.text == #""a\u003cb\u003e\u0026\"\\\n\r\t\u0001\u2028é""#)
        #expect(try JSONValue(parsing: value.text) == value)
    }

    @Test func parsesTheGrammar() throws {
        let text = #" { "a" : [ 1, -0.5e+3, true, false, null, "x\u00e9\ud83d\ude00" ], "b": {} , "c": [] } "#
        let value = try JSONValue(parsing: text)
        #expect(value["a"] == .array([.number("1"), .number("-0.5e+3"), .bool(true), .bool(false), .null, .string("xé😀")]))
        #expect(value["B"] == .object([]))
        #expect(value.text == #"{"a":[1,-0.5e+3,true,false,null,"xé😀"],"b":{},"c":[]}"#)
    }

    @Test("malformed JSON is an error, never a trap", arguments: [
        "", "{", "}", "[1,]", "{\"a\"}", "{\"a\":}", "01", "-", "1.", "1e", "\"\\x\"", "\"\\u12\"", "tru", "nul",
        "\"unterminated", "{\"a\":1,}", "[1 2]", "\"\u{01}\"", "1 2",
    ])
    func malformed(text: String) {
        #expect(throws: PayloadError.self) { try JSONValue(parsing: text) }
    }

    @Test func depthIsBounded() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: PayloadError.self) { try JSONValue(parsing: deep) }
        let fine = String(repeating: "[", count: 32) + String(repeating: "]", count: 32)
        #expect(throws: Never.self) { try JSONValue(parsing: fine) }
    }
}
