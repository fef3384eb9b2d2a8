import Crypto
import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import SSMProtocol
import TestSupport
import Testing

@testable import DataChannel
@testable import Sessions

@Suite("Data channel pieces without I/O")
struct DataChannelUnitTests {
    @Test("Basic port forwarding: a connection accepted while the current one closes, not yet active, gets the byte stream next")
    func basicBridgeTakesAConnectionNotYetActive() throws {
        // NIO activates an accepted socket a tick after the initializer hands it over; a connection
        // closing in between made the bridge skip the new one, whose client then waited forever.
        let loop = EmbeddedEventLoop()
        let channel = try DataChannel(
            streamURL: "wss://127.0.0.1:1/v1/data-channel/s-0", token: "token", sessionID: "s-0", clientID: DataChannel.uuid(),
            configuration: DataChannelConfiguration(), eventLoop: loop, renewToken: nil)
        let bridge = BasicPortBridge(channel: channel, notice: { _ in })
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        let first = EmbeddedChannel(loop: loop)
        bridge.accept(first)
        try first.connect(to: address).wait()
        let second = EmbeddedChannel(loop: loop)
        bridge.accept(second)
        let abandoned = EmbeddedChannel(loop: loop)
        bridge.accept(abandoned)
        #expect(bridge.current === first)
        #expect(bridge.waiting.count == 2)
        #expect(!second.isActive)
        // One that closes before it was ever active (no channelInactive) leaves the queue too.
        try abandoned.close().wait()
        #expect(bridge.waiting.count == 1)
        try first.close().wait()
        #expect(bridge.current === second, "the open connection not yet active must be next")
        #expect(bridge.waiting.isEmpty)
        try second.connect(to: address).wait()
        #expect(bridge.current === second)
        _ = try? second.finish()
    }

    static func hex(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            bytes.append(UInt8(text[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    static func cryptoVectors() throws -> [String: Any] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../SSMProtocolTests/Vectors/crypto.json")
        return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
    }

    @Test("KMS session cipher reproduces the official client's ciphertext and reads the agent's")
    func cipherMatchesVectors() throws {
        let vectors = try Self.cryptoVectors()
        let cipher = try SessionCipher(dataKey: Self.hex(try #require(vectors["data_key_plaintext_hex"] as? String)))
        let samples = try #require(vectors["samples"] as? [[String: Any]])
        for sample in samples {
            let wire = ByteBuffer(bytes: Self.hex(sample["wire_hex"] as! String))
            let plain = Self.hex(sample["plaintext_hex"] as! String)
            if (sample["direction"] as! String).hasPrefix("client") {
                let nonce = try AES.GCM.Nonce(data: Self.hex(sample["nonce_hex"] as! String))
                let encrypted = try cipher.encrypt(ByteBuffer(bytes: plain), nonce: nonce, allocator: ByteBufferAllocator())
                #expect(Array(encrypted.readableBytesView) == Array(wire.readableBytesView))
            } else {
                let decrypted = try cipher.decrypt(wire)
                #expect(Array(decrypted.readableBytesView) == plain)
            }
        }
        // The challenge: decrypt with the agent's key, re-encrypt with ours; the agent reads it back.
        let exchange = try #require(vectors["challenge_exchange"] as? [String: Any])
        let answer = try cipher.answerChallenge(ByteBuffer(bytes: Self.hex(exchange["agent_encrypted_challenge_wire_hex"] as! String)))
        let agentKey = SymmetricKey(data: Self.hex(try #require(vectors["data_key_plaintext_hex"] as? String))[32..<64])
        let readBack = try SessionCipher.open(answer, key: agentKey, allocator: ByteBufferAllocator())
        #expect(Array(readBack.readableBytesView) == Self.hex(exchange["challenge_plaintext_hex"] as! String))
        // Our own ciphertext does not decrypt with the receive key (the vectors' negative case).
        let negatives = try #require(vectors["negative"] as? [[String: Any]])
        #expect(throws: (any Error).self) { try cipher.decrypt(ByteBuffer(bytes: Self.hex(negatives[0]["wire_hex"] as! String))) }
        #expect(throws: DataChannelError.self) { try SessionCipher(dataKey: [UInt8](repeating: 0, count: 32)) }
    }

    @Test("Stream URLs: wss and ws, ports, IPv6, query kept verbatim, bad ones named")
    func streamURLs() throws {
        let aws = try StreamEndpoint(parsing: "wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/alice-0a1?role=publish_subscribe&x=1")
        #expect(aws == StreamEndpoint(usesTLS: true, host: "ssmmessages.us-east-1.amazonaws.com", port: 443,
                                      requestTarget: "/v1/data-channel/alice-0a1?role=publish_subscribe&x=1"))
        #expect(aws.hostHeader == "ssmmessages.us-east-1.amazonaws.com")
        #expect(aws.description == "wss://ssmmessages.us-east-1.amazonaws.com")
        let local = try StreamEndpoint(parsing: "ws://127.0.0.1:4587/v1/data-channel/s?role=publish_subscribe")
        #expect(local.port == 4587 && !local.usesTLS && local.hostHeader == "127.0.0.1:4587")
        let v6 = try StreamEndpoint(parsing: "ws://[::1]:9000?role=x")
        #expect(v6.host == "::1" && v6.port == 9000 && v6.requestTarget == "/?role=x" && v6.hostHeader == "[::1]:9000")
        for bad in ["https://x/", "ws://", "ws://h:0/", "ws://h:99999/", "ws://[::1/", "ws://user@h/"] {
            #expect(throws: DataChannelError.self) { try StreamEndpoint(parsing: bad) }
        }
    }

    @Test("A stream URL whose host does not resolve fails the dial with a message naming the host")
    func unresolvableStreamHost() async throws {
        let endpoint = try StreamEndpoint(parsing: "wss://ssmmessages.nowhere.invalid/v1/data-channel/s?role=publish_subscribe")
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let error = await #expect(throws: DataChannelError.self) {
            _ = try await WebSocketDialer.connect(to: endpoint, on: loop, connectTimeout: .seconds(5), maximumFrameSize: 1 << 20) { _ in }.get()
        }
        #expect(error.map { "\($0)" }?.contains("cannot resolve ssmmessages.nowhere.invalid: SocketAddressError.UnknownHost") == true, "\(String(describing: error))")
    }

    @Test("Agent version gates compare like the official client: same length, strictly greater")
    func agentVersionGates() {
        #expect(AgentVersion("3.3.987.0").supportsMux)
        #expect(!AgentVersion("3.0.196.0").supportsMux)
        #expect(AgentVersion("3.0.196.1").supportsMux)
        #expect(!AgentVersion("3.1").supportsMux)
        #expect(!AgentVersion("").supportsMux)
        #expect(!AgentVersion("3.x.1.0").supportsMux)
        #expect(AgentVersion("2.3.723.0").takesTerminateFlag)
        #expect(AgentVersion("3.1.1512.0").isGreater(than: "3.1.1511.0"))
        #expect(!AgentVersion("3.1.1511.0").isGreater(than: "3.1.1511.0"))
    }

    @Test("The default ClientVersion clears every gate of the agent and awscli")
    func clientVersionGates() {
        let version = AgentVersion(DataChannelConfiguration.defaultClientVersion)
        #expect(version.isGreater(than: "1.2.497.0"))  // awscli: response in the environment
        #expect(version.isGreater(than: "1.2.331.0"))  // agent: smux keepalive off
        #expect(version.isGreater(than: "1.2.312.0"))  // separate stderr, no upgrade hint
        #expect(version.isGreater(than: "1.1.70.0"))   // mux
    }

    @Test("Exit markers are found, removed and survive being split across messages")
    func exitMarker() {
        var scanner = ExitMarkerScanner()
        var whole = ByteBuffer(string: "hello\r\n\u{1B}]777;ssmgate-exit=3\u{07}")
        #expect(scanner.scan(&whole) == 3)
        #expect(String(buffer: whole) == "hello\r\n")

        let marker = Array("out\u{1B}]777;ssmgate-exit=42\u{07}tail".utf8)
        for split in 1..<marker.count {
            var scanner = ExitMarkerScanner()
            var first = ByteBuffer(bytes: marker[..<split])
            var second = ByteBuffer(bytes: marker[split...])
            let a = scanner.scan(&first)
            let b = scanner.scan(&second)
            #expect((a ?? b) == 42, "split at \(split)")
            #expect(String(buffer: first) + String(buffer: second) == "outtail", "split at \(split)")
        }
        // An escape that is not a marker is passed through, at the latest when the stream ends.
        var other = ByteBuffer(string: "x\u{1B}[31mred")
        #expect(scanner.scan(&other) == nil)
        #expect(String(buffer: other) == "x\u{1B}[31mred")
        var partial = ByteBuffer(string: "y\u{1B}]77")
        #expect(scanner.scan(&partial) == nil)
        #expect(String(buffer: partial) + String(buffer: scanner.flush()) == "y\u{1B}]77")
    }

    @Test("UUIDs are lowercase, hyphenated, version 4")
    func uuids() {
        let id = DataChannel.uuid()
        #expect(id.count == 36 && id == id.lowercased())
        #expect(Array(id)[14] == "4")
        #expect(id.split(separator: "-").map(\.count) == [8, 4, 4, 4, 12])
    }
}
