import Crypto
import Foundation
import Gateway
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TestSupport

/// The SOCKS5, HTTP CONNECT and static-forward fronts over real loopback TCP (LoopbackServices),
/// with real curl as the client where it fits.
// Serialized: the 16 MiB echoes load both event loops of a shared 2-core machine, and the
// handshake deadlines here are short.
@Suite("TCPFronts", .serialized, .timeLimit(.minutes(3)))
struct TCPFrontsTests {
    static let group = MultiThreadedEventLoopGroup.singleton

    // MARK: curl

    @Test("curl --socks5-hostname and --socks5 (IPv4) fetch through the SOCKS5 front")
    func curlThroughSOCKS5() async throws {
        let curl = try Self.curl()
        let web = try await TinyHTTPServer(bodySize: 1 << 20)
        let services = LoopbackServices()
        let front = SOCKS5Front(services: services, group: Self.group)
        let listener = try await front.bind(port: 0).get()
        defer { listener.close(promise: nil); web.close() }
        let port = listener.localAddress!.port!
        let scratch = try ScratchDirectory("socks-curl")
        defer { scratch.remove() }

        let byName = try await run(curl, ["-sS", "--max-time", "30", "--socks5-hostname", "127.0.0.1:\(port)",
                                          "http://localhost:\(web.port)/by-name", "-o", scratch.file("a")], environment: Self.environment)
        #expect(byName.status == 0, "\(byName.stderr)")
        #expect(try sha256(ofFile: scratch.file("a")) == web.bodySHA256)

        let byAddress = try await run(curl, ["-sS", "--max-time", "30", "--socks5", "127.0.0.1:\(port)",
                                             "http://127.0.0.1:\(web.port)/by-address", "-o", scratch.file("b")], environment: Self.environment)
        #expect(byAddress.status == 0, "\(byAddress.stderr)")
        #expect(try sha256(ofFile: scratch.file("b")) == web.bodySHA256)

        // An IPv6 literal travels as ATYP 0x04 and reaches the gateway as text.
        let byIPv6 = try await run(curl, ["-sS", "--max-time", "30", "--socks5", "127.0.0.1:\(port)",
                                          "http://[::1]:\(web.port)/by-ipv6", "-o", scratch.file("c")], environment: Self.environment)
        #expect(byIPv6.status == 0, "\(byIPv6.stderr)")
        #expect(try sha256(ofFile: scratch.file("c")) == web.bodySHA256)

        // Each stream's record is written when it ends. (A stream ending late here was a test daemon
        // holding the web server's socket open: see SpawnedDaemon.)
        let records = await Self.records(services, count: 3)
        #expect(records.map(\.request.host).sorted() == ["127.0.0.1", "::1", "localhost"])
        for record in records {
            #expect(record.outcome == "ok")
            #expect(record.request.identity.front == .socks5)
            #expect(record.request.identity.user == "anonymous")
            #expect(record.request.port == web.port)
            #expect(record.bytesToClient == web.responseSize)
            #expect(record.bytesFromClient > 0)
        }
        #expect(await Self.eventually { front.connections.open == 0 })
        #expect(front.connections.accepted == 3)
    }

    @Test("curl -p --proxy tunnels through the HTTP CONNECT front")
    func curlThroughHTTPConnect() async throws {
        let curl = try Self.curl()
        let web = try await TinyHTTPServer(bodySize: 1 << 20)
        let services = LoopbackServices()
        let front = HTTPConnectFront(services: services, group: Self.group)
        let listener = try await front.bind(port: 0).get()
        defer { listener.close(promise: nil); web.close() }
        let port = listener.localAddress!.port!
        let scratch = try ScratchDirectory("http-curl")
        defer { scratch.remove() }

        let result = try await run(curl, ["-sS", "--max-time", "30", "-p", "--proxy", "http://127.0.0.1:\(port)",
                                          "http://localhost:\(web.port)/file", "-o", scratch.file("a")], environment: Self.environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try sha256(ofFile: scratch.file("a")) == web.bodySHA256)
        let records = await Self.records(services, count: 1)
        #expect(records.first?.outcome == "ok")
        #expect(records.first?.request.identity.front == .httpConnect)
        #expect(records.first?.bytesToClient == web.responseSize)

        // Without -p curl sends a plain GET to the proxy: it is told this is a CONNECT proxy.
        let plain = try await run(curl, ["-sS", "--max-time", "30", "--proxy", "http://127.0.0.1:\(port)",
                                         "-w", "%{http_code}", "http://localhost:\(web.port)/file"], environment: Self.environment)
        #expect(plain.stdout.hasSuffix("405"))
        #expect(plain.stdout.contains("CONNECT proxy"))
    }

    @Test("SOCKS5 username/password: the right one is accepted and names the user, a wrong one is refused")
    func socksPassword() async throws {
        let curl = try Self.curl()
        let web = try await TinyHTTPServer(bodySize: 4096)
        let services = LoopbackServices()
        let front = SOCKS5Front(
            services: services,
            options: .init(allowNoAuth: false, passwordCheck: { user, password in user == "alice" && password == "s3cret" ? "alice" : nil }),
            group: Self.group)
        let listener = try await front.bind(port: 0).get()
        defer { listener.close(promise: nil); web.close() }
        let port = listener.localAddress!.port!

        let good = try await run(curl, ["-sS", "--max-time", "30", "--proxy", "socks5h://alice:s3cret@127.0.0.1:\(port)",
                                        "http://localhost:\(web.port)/", "-o", "/dev/null", "-w", "%{http_code}"], environment: Self.environment)
        #expect(good.status == 0, "\(good.stderr)")
        #expect(good.stdout == "200")
        let bad = try await run(curl, ["-sS", "--max-time", "30", "--proxy", "socks5h://alice:wrong@127.0.0.1:\(port)",
                                       "http://localhost:\(web.port)/", "-o", "/dev/null"], environment: Self.environment)
        #expect(bad.status != 0)
        // No credentials at all, while they are required: method 0xFF.
        let none = try await Self.exchange(port: port, send: [0x05, 0x01, 0x00])
        #expect(Array(none.readableBytesView) == [0x05, 0xFF])

        let records = await Self.records(services, count: 1)
        #expect(records.first?.request.identity.user == "alice")
        try await Task.sleep(for: .milliseconds(100))
        #expect(services.finished.count == 1, "the refused clients opened no stream")
    }

    @Test("HTTP CONNECT with Proxy-Authorization: 407 without, tunnel with the right password")
    func httpConnectPassword() async throws {
        let curl = try Self.curl()
        let web = try await TinyHTTPServer(bodySize: 4096)
        let services = LoopbackServices()
        let front = HTTPConnectFront(
            services: services, options: .init(passwordCheck: { user, password in password == "pw" ? user : nil }), group: Self.group)
        let listener = try await front.bind(port: 0).get()
        defer { listener.close(promise: nil); web.close() }
        let port = listener.localAddress!.port!

        let missing = try await Self.exchange(port: port, send: Array("CONNECT localhost:\(web.port) HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        let text = String(buffer: missing)
        #expect(text.hasPrefix("HTTP/1.1 407 "))
        #expect(text.contains("Proxy-Authenticate: Basic realm=\"ssmgate\""))

        let good = try await run(curl, ["-sS", "--max-time", "30", "-p", "--proxy", "http://bob:pw@127.0.0.1:\(port)",
                                        "http://localhost:\(web.port)/", "-o", "/dev/null", "-w", "%{http_code}"], environment: Self.environment)
        #expect(good.stdout == "200", "\(good.stderr)")
        let records = await Self.records(services, count: 1)
        #expect(records.first?.request.identity.user == "bob")
    }

    // MARK: 16 MiB echo

    @Test("16 MiB echo through the static forward, with the bytes in the record")
    func echoThroughForward() async throws {
        let echo = try await EchoServer()
        let services = LoopbackServices()
        let front = StaticForwardFront(services: services, options: .init(targetHost: "db.internal", targetPort: echo.port), group: Self.group)
        let listener = try await front.bind(port: 0).get()
        defer { listener.close(promise: nil) }
        let result = try await echoThrough(port: listener.localAddress!.port!, bytes: 16 << 20, seed: 7)
        await echo.close()
        #expect(result.received == 16 << 20)
        #expect(result.sentSHA256 == result.receivedSHA256)
        let records = await Self.records(services, count: 1)
        #expect(records.first?.request.host == "db.internal")
        #expect(records.first?.request.identity.front == .forward)
        #expect(records.first?.bytesFromClient == 16 << 20)
        #expect(records.first?.bytesToClient == 16 << 20)
        #expect(records.first?.outcome == "ok")
    }

    @Test("16 MiB echo through SOCKS5, with data pipelined behind the request")
    func echoThroughSOCKS5() async throws {
        let echo = try await EchoServer()
        let services = LoopbackServices()
        let front = SOCKS5Front(services: services, group: Self.group)
        let listener = try await front.bind(port: 0).get()
        defer { listener.close(promise: nil) }
        let preamble = Self.socksGreetingAndRequest(host: "echo.internal", port: echo.port)
        let result = try await TunnelClient.run(
            port: listener.localAddress!.port!, preamble: preamble, payload: 16 << 20, expect: 16 << 20,
            headerLength: { $0.readableBytes >= 12 ? 12 : nil })
        await echo.close()
        #expect(Array(result.header.readableBytesView.prefix(4)) == [0x05, 0x00, 0x05, 0x00])
        #expect(result.received == 16 << 20)
        #expect(result.sentSHA256 == result.receivedSHA256)
        let records = await Self.records(services, count: 1)
        #expect(records.first?.bytesFromClient == 16 << 20)
        #expect(records.first?.bytesToClient == 16 << 20)
    }

    @Test("16 MiB echo through HTTP CONNECT, with data pipelined behind the request")
    func echoThroughHTTPConnect() async throws {
        let echo = try await EchoServer()
        let services = LoopbackServices()
        let front = HTTPConnectFront(services: services, group: Self.group)
        let listener = try await front.bind(port: 0).get()
        defer { listener.close(promise: nil) }
        let preamble = Array("CONNECT echo.internal:\(echo.port) HTTP/1.1\r\nHost: echo.internal:\(echo.port)\r\n\r\n".utf8)
        let result = try await TunnelClient.run(
            port: listener.localAddress!.port!, preamble: preamble, payload: 16 << 20, expect: 16 << 20,
            headerLength: Self.httpHeadLength)
        await echo.close()
        #expect(String(buffer: result.header).hasPrefix("HTTP/1.1 200 "))
        #expect(result.received == 16 << 20)
        #expect(result.sentSHA256 == result.receivedSHA256)
        let records = await Self.records(services, count: 1)
        #expect(records.first?.bytesFromClient == 16 << 20)
        #expect(records.first?.bytesToClient == 16 << 20)
    }

    // MARK: Half-close

    @Test("Half-close: a client that sends, then shuts its write side, gets the whole answer (all fronts)")
    func halfClose() async throws {
        let server = try await AnswerAfterEOFServer()
        defer { server.close() }
        let services = LoopbackServices()
        let socks = try await SOCKS5Front(services: services, group: Self.group).bind(port: 0).get()
        let http = try await HTTPConnectFront(services: services, group: Self.group).bind(port: 0).get()
        let forward = try await StaticForwardFront(
            services: services, options: .init(targetHost: "t", targetPort: server.port), group: Self.group).bind(port: 0).get()
        defer { for channel in [socks, http, forward] { channel.close(promise: nil) } }

        // 100 bytes: the EOF arrives with the request, before the stream is open; 3 MiB: long after.
        for size in [100, 3 << 20] {
        let cases: [(Int, [UInt8], @Sendable (ByteBuffer) -> Int?)] = [
            (socks.localAddress!.port!, Self.socksGreetingAndRequest(host: "t", port: server.port), { $0.readableBytes >= 12 ? 12 : nil }),
            (http.localAddress!.port!, Array("CONNECT t:\(server.port) HTTP/1.1\r\n\r\n".utf8), Self.httpHeadLength),
            (forward.localAddress!.port!, [], { _ in 0 }),
        ]
        for (port, preamble, headerLength) in cases {
            let result = try await TunnelClient.run(
                port: port, preamble: preamble, payload: size, expect: nil, halfCloseAfterSending: true, headerLength: headerLength)
            let answer = String(buffer: result.bodyPrefix)
            #expect(answer == "\(size) \(result.sentSHA256)\n", "port \(port)")
        }
        }
        let records = await Self.records(services, count: 6)
        #expect(records.count == 6)
        for record in records {
            #expect(record.outcome == "ok")
            #expect(record.bytesToClient == "\(record.bytesFromClient) ".utf8.count + 65)
        }
        #expect(records.map(\.bytesFromClient).sorted() == [100, 100, 100, 3 << 20, 3 << 20, 3 << 20])
    }

    // MARK: Backpressure

    @Test("A client that does not read holds the destination back (bounded), then gets all 32 MiB")
    func slowClientBackpressure() async throws {
        let size = 32 << 20
        let flood = try await FloodServer(bytes: size)
        defer { flood.close() }
        let services = LoopbackServices()
        let socks = try await SOCKS5Front(services: services, group: Self.group).bind(port: 0).get()
        defer { socks.close(promise: nil) }
        let writtenAtResume = NIOLockedValueBox(0)
        let result = try await TunnelClient.run(
            port: socks.localAddress!.port!, preamble: Self.socksGreetingAndRequest(host: "flood", port: flood.port),
            payload: 0, expect: size, pauseReading: .seconds(1),
            onResume: { writtenAtResume.withLockedValue { $0 = flood.written } },
            headerLength: { $0.readableBytes >= 12 ? 12 : nil })
        // Kernel buffers on three sockets plus the relay's 256 KiB high water mark: far below 32 MiB.
        let held = writtenAtResume.withLockedValue { $0 }
        #expect(held < 16 << 20, "the destination wrote \(held) bytes while the client read nothing")
        #expect(result.received == size)
        #expect(result.receivedSHA256 == flood.sha256)
        let records = await Self.records(services, count: 1)
        #expect(records.first?.bytesToClient == size)
    }

    // MARK: Errors

    @Test("A denied host gets SOCKS5 reply 0x02 and HTTP 403 with the message; errors are recorded")
    func deniedHost() async throws {
        let services = LoopbackServices(deniedHosts: ["secret.internal"])
        let socks = try await SOCKS5Front(services: services, group: Self.group).bind(port: 0).get()
        let http = try await HTTPConnectFront(services: services, group: Self.group).bind(port: 0).get()
        defer { socks.close(promise: nil); http.close(promise: nil) }

        let reply = try await Self.exchange(port: socks.localAddress!.port!, send: Self.socksGreetingAndRequest(host: "secret.internal", port: 22))
        #expect(Array(reply.readableBytesView) == [0x05, 0x00, 0x05, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0])

        let response = try await Self.exchange(port: http.localAddress!.port!, send: Array("CONNECT secret.internal:22 HTTP/1.1\r\n\r\n".utf8))
        let text = String(buffer: response)
        #expect(text.hasPrefix("HTTP/1.1 403 Forbidden\r\n"))
        #expect(text.contains("anonymous may not reach secret.internal:22"))

        // Nothing listens on the port: session_failed → SOCKS 0x05, HTTP 502.
        let closedPort = try await freePort()
        let refused = try await Self.exchange(port: socks.localAddress!.port!, send: Self.socksGreetingAndRequest(host: "x", port: closedPort))
        #expect(Array(refused.readableBytesView.prefix(4)) == [0x05, 0x00, 0x05, 0x05])
        let badGateway = try await Self.exchange(port: http.localAddress!.port!, send: Array("CONNECT x:\(closedPort) HTTP/1.1\r\n\r\n".utf8))
        #expect(String(buffer: badGateway).hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))

        let records = await Self.records(services, count: 4)
        #expect(records.filter { $0.outcome.hasPrefix("denied: ") }.count == 2)
        #expect(records.filter { $0.outcome.hasPrefix("session_failed: ") }.count == 2)
        #expect(records.allSatisfy { $0.route == nil && $0.bytesFromClient == 0 })
    }

    @Test("Malformed SOCKS5 and HTTP input is closed cleanly and the front keeps working")
    func malformed() async throws {
        let echo = try await EchoServer()
        let services = LoopbackServices()
        let socks = try await SOCKS5Front(services: services, group: Self.group).bind(port: 0).get()
        let impatient = try await SOCKS5Front(services: services, options: .init(handshakeTimeout: .seconds(1)), group: Self.group).bind(port: 0).get()
        defer { impatient.close(promise: nil) }
        let http = try await HTTPConnectFront(services: services, group: Self.group).bind(port: 0).get()
        defer { socks.close(promise: nil); http.close(promise: nil) }
        let socksPort = socks.localAddress!.port!

        // SOCKS4, then a truncated greeting with EOF, then a flood of garbage: closed, nothing sent.
        #expect(try await Self.exchange(port: socksPort, send: [0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0]).readableBytes == 0)
        #expect(try await Self.exchange(port: socksPort, send: [0x05, 0x03, 0x00]).readableBytes == 0)
        let emptyName = try await Self.exchange(port: socksPort, send: [0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x16])
        #expect(Array(emptyName.readableBytesView.prefix(4)) == [0x05, 0x00, 0x05, 0x04])
        #expect(try await Self.exchange(port: socksPort, send: [0x05, 0x01, 0x00] + [0x05, 0x01, 0x00] + [UInt8](repeating: 0x05, count: 1 << 20)).readableBytes <= 12)
        #expect(try await Self.exchange(port: socksPort, send: [0x05, 0x05] + [UInt8](repeating: 0x05, count: 1 << 20)).readableBytes <= 2)
        // BIND and UDP ASSOCIATE: command not supported; unknown address type: 0x08.
        let bind = try await Self.exchange(port: socksPort, send: [0x05, 0x01, 0x00, 0x05, 0x02, 0x00, 0x01, 127, 0, 0, 1, 0, 80])
        #expect(Array(bind.readableBytesView.prefix(4)) == [0x05, 0x00, 0x05, 0x07])
        let atyp = try await Self.exchange(port: socksPort, send: [0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x09, 1, 2])
        #expect(Array(atyp.readableBytesView.prefix(4)) == [0x05, 0x00, 0x05, 0x08])
        // Silent after the greeting: closed at the handshake deadline.
        let silent = try await Self.exchange(port: impatient.localAddress!.port!, send: [0x05, 0x01, 0x00], halfClose: false)
        #expect(Array(silent.readableBytesView) == [0x05, 0x00])

        // HTTP: bad authority → 400; garbage → 400; a huge head → closed.
        let badAuthority = try await Self.exchange(port: http.localAddress!.port!, send: Array("CONNECT nohost HTTP/1.1\r\n\r\n".utf8))
        #expect(String(buffer: badAuthority).hasPrefix("HTTP/1.1 400 "))
        let garbage = try await Self.exchange(port: http.localAddress!.port!, send: Array("\u{1}\u{2}\u{3} nonsense\r\n\r\n".utf8))
        #expect(String(buffer: garbage).hasPrefix("HTTP/1.1 400 "))
        let huge = try await Self.exchange(
            port: http.localAddress!.port!, send: Array("CONNECT a:1 HTTP/1.1\r\nX: \(String(repeating: "a", count: 100_000))\r\n\r\n".utf8))
        #expect(String(buffer: huge).hasPrefix("HTTP/1.1 431 ") || huge.readableBytes == 0)

        // Still serving.
        let result = try await TunnelClient.run(
            port: socksPort, preamble: Self.socksGreetingAndRequest(host: "e", port: echo.port), payload: 100_000, expect: 100_000,
            headerLength: { $0.readableBytes >= 12 ? 12 : nil })
        await echo.close()
        #expect(result.sentSHA256 == result.receivedSHA256)
        #expect(services.finished.allSatisfy { $0.request.host == "e" })
    }

    @Test("A stream that does not open in time: SOCKS5 general failure, HTTP 503; a silent HTTP client gets 408")
    func openTimeout() async throws {
        let services = StallingServices()
        let socks = try await SOCKS5Front(services: services, options: .init(openTimeout: .milliseconds(300)), group: Self.group)
            .bind(port: 0).get()
        let http = try await HTTPConnectFront(
            services: services, options: .init(handshakeTimeout: .milliseconds(500), openTimeout: .milliseconds(300)), group: Self.group
        ).bind(port: 0).get()
        defer { socks.close(promise: nil); http.close(promise: nil); services.failAll() }

        let reply = try await Self.exchange(port: socks.localAddress!.port!, send: Self.socksGreetingAndRequest(host: "slow", port: 1), halfClose: false)
        #expect(Array(reply.readableBytesView.prefix(4)) == [0x05, 0x00, 0x05, 0x01])
        let response = try await Self.exchange(port: http.localAddress!.port!, send: Array("CONNECT slow:1 HTTP/1.1\r\n\r\n".utf8), halfClose: false)
        #expect(String(buffer: response).hasPrefix("HTTP/1.1 503 "))
        #expect(String(buffer: response).contains("took longer than"))
        let silent = try await Self.exchange(port: http.localAddress!.port!, send: Array("CONNECT slow:1 HTTP/1.1\r\n".utf8), halfClose: false)
        #expect(String(buffer: silent).hasPrefix("HTTP/1.1 408 "))
        #expect(services.finished.map(\.outcome).allSatisfy { $0.hasPrefix("unavailable: ") })
        #expect(services.finished.count == 2)
    }

    // MARK: Helpers

    static var environment: [String: String] {
        ProcessInfo.processInfo.environment.filter { !$0.key.lowercased().hasSuffix("_proxy") }
    }

    static func curl() throws -> String {
        guard let curl = findExecutable("curl") else { throw ToolMissing(tool: "curl") }
        return curl
    }

    static func socksGreetingAndRequest(host: String, port: Int) -> [UInt8] {
        [0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, UInt8(host.utf8.count)] + Array(host.utf8) + [UInt8(port >> 8), UInt8(port & 0xFF)]
    }

    static let httpHeadLength: @Sendable (ByteBuffer) -> Int? = { buffer in
        let view = buffer.readableBytesView
        guard view.count >= 4 else { return nil }
        for index in view.indices.dropLast(3)
        where view[index] == 13 && view[index + 1] == 10 && view[index + 2] == 13 && view[index + 3] == 10 {
            return view.startIndex.distance(to: index) + 4
        }
        return nil
    }

    /// Sends `send`, half-closes (unless told not to), and returns everything received until the server closes.
    static func exchange(port: Int, send: [UInt8], halfClose: Bool = true) async throws -> ByteBuffer {
        let result = try await TunnelClient.run(
            port: port, preamble: send, payload: 0, expect: nil, halfCloseAfterSending: halfClose, headerLength: { _ in 0 })
        return result.bodyPrefix
    }

    /// Waits (bounded) until `count` records arrived; returns what is there.
    static func records(_ services: LoopbackServices, count: Int) async -> [StreamRecord] {
        _ = await Self.eventually { services.finished.count >= count }
        return services.finished
    }

    static func eventually(within seconds: Double = 30, _ condition: @Sendable () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }
}

// MARK: - Test peers

/// A client that sends a preamble (a proxy handshake, pipelined), then `payload` deterministic
/// bytes with backpressure, and optionally half-closes; it hashes what comes back after the
/// proxy's reply header (`headerLength`), until `expect` bytes arrived or the server closed.
final class TunnelClient: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct Result: Sendable {
        var header: ByteBuffer
        var received: Int
        var sentSHA256: String
        var receivedSHA256: String
        /// The first 64 KiB after the header.
        var bodyPrefix: ByteBuffer
    }

    let preamble: [UInt8]
    var remaining: Int
    let expect: Int?
    let halfClose: Bool
    let headerLength: @Sendable (ByteBuffer) -> Int?
    let done: EventLoopPromise<Result>
    var generator: UInt64 = 0x9E37_79B9_7F4A_7C15
    var sentHash = SHA256()
    var receivedHash = SHA256()
    var header = ByteBuffer()
    var headerDone = false
    var received = 0
    var prefix = ByteBuffer()
    var completed = false
    var halfClosed = false

    init(preamble: [UInt8], payload: Int, expect: Int?, halfClose: Bool, headerLength: @escaping @Sendable (ByteBuffer) -> Int?, done: EventLoopPromise<Result>) {
        self.preamble = preamble
        self.remaining = payload
        self.expect = expect
        self.halfClose = halfClose
        self.headerLength = headerLength
        self.done = done
    }

    static func run(
        port: Int, preamble: [UInt8], payload: Int, expect: Int?, halfCloseAfterSending: Bool = false,
        pauseReading: TimeAmount? = nil, onResume: (@Sendable () -> Void)? = nil,
        headerLength: @escaping @Sendable (ByteBuffer) -> Int?
    ) async throws -> Result {
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Result.self)
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
        if pauseReading != nil {
            // A small fixed receive buffer, so that what the proxy may hold back is what the test measures.
            bootstrap = bootstrap.channelOption(.autoRead, value: false).channelOption(.socketOption(.so_rcvbuf), value: 1 << 20)
        }
        let channel = try await bootstrap
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let client = TunnelClient(
                        preamble: preamble, payload: payload, expect: expect, halfClose: halfCloseAfterSending,
                        headerLength: headerLength, done: promise)
                    client.pauseReading = pauseReading
                    client.onResume = onResume
                    try channel.pipeline.syncOperations.addHandler(client)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        defer { channel.close(promise: nil) }
        return try await promise.futureResult.get()
    }

    var pauseReading: TimeAmount?
    var onResume: (@Sendable () -> Void)?

    func channelActive(context: ChannelHandlerContext) {
        if let pause = self.pauseReading {
            context.eventLoop.assumeIsolated().scheduleTask(in: pause) {
                self.onResume?()
                context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
            }
        }
        if !self.preamble.isEmpty {
            context.write(self.wrapOutboundOut(ByteBuffer(bytes: self.preamble)), promise: nil)
        }
        self.produce(context: context)
        context.fireChannelActive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.produce(context: context)
    }

    func produce(context: ChannelHandlerContext) {
        while self.remaining > 0, context.channel.isWritable {
            let count = min(self.remaining, 32 * 1024)
            var chunk = context.channel.allocator.buffer(capacity: count + 8)
            while chunk.readableBytes < count {
                // SplitMix64
                self.generator &+= 0x9E37_79B9_7F4A_7C15
                var z = self.generator
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                chunk.writeInteger(z ^ (z >> 31))
            }
            chunk.moveWriterIndex(to: chunk.readerIndex + count)
            chunk.withUnsafeReadableBytes { self.sentHash.update(bufferPointer: $0) }
            self.remaining -= count
            context.write(self.wrapOutboundOut(chunk), promise: nil)
        }
        context.flush()
        if self.remaining == 0, self.halfClose, !self.halfClosed {
            self.halfClosed = true
            context.close(mode: .output, promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        if !self.headerDone {
            self.header.writeBuffer(&buffer)
            guard let length = self.headerLength(self.header) else { return }
            self.headerDone = true
            buffer = self.header.getSlice(at: self.header.readerIndex + length, length: self.header.readableBytes - length)!
            self.header.moveWriterIndex(to: self.header.readerIndex + length)
        }
        self.received += buffer.readableBytes
        buffer.withUnsafeReadableBytes { self.receivedHash.update(bufferPointer: $0) }
        if self.prefix.readableBytes < 65536 {
            var slice = buffer.getSlice(at: buffer.readerIndex, length: min(buffer.readableBytes, 65536 - self.prefix.readableBytes))!
            self.prefix.writeBuffer(&slice)
        }
        if let expect = self.expect, self.received >= expect {
            self.complete()
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.complete()
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.complete()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func complete() {
        guard !self.completed else { return }
        self.completed = true
        self.done.succeed(Result(
            header: self.header, received: self.received, sentSHA256: Self.hex(self.sentHash.finalize()),
            receivedSHA256: Self.hex(self.receivedHash.finalize()), bodyPrefix: self.prefix))
    }

    static func hex(_ digest: SHA256.Digest) -> String { digest.map { String(format: "%02x", $0) }.joined() }
}

/// Reads until the client's EOF, then answers "<byte count> <sha256 hex>\n" and closes: only a
/// proxy that carries half-close lets the answer through.
final class AnswerAfterEOFServer: Sendable {
    let channel: any Channel
    var port: Int { self.channel.localAddress!.port! }

    init() async throws {
        self.channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() { self.channel.close(promise: nil) }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var hash = SHA256()
        var count = 0

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = self.unwrapInboundIn(data)
            self.count += buffer.readableBytes
            buffer.withUnsafeReadableBytes { self.hash.update(bufferPointer: $0) }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            guard let event = event as? ChannelEvent, event == .inputClosed else { return }
            let answer = "\(self.count) \(TunnelClient.hex(self.hash.finalize()))\n"
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: answer))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }
}

/// A minimal HTTP server: any request gets `bodySize` deterministic bytes and `Connection: close`.
final class TinyHTTPServer: Sendable {
    let channel: any Channel
    let body: ByteBuffer
    let bodySHA256: String
    let responseSize: Int
    var port: Int { self.channel.localAddress!.port! }

    init(bodySize: Int) async throws {
        var body = ByteBuffer()
        var state: UInt32 = 2_463_534_242
        for _ in 0..<bodySize {
            state ^= state << 13; state ^= state >> 17; state ^= state << 5
            body.writeInteger(UInt8(truncatingIfNeeded: state))
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: \(bodySize)\r\nConnection: close\r\n\r\n"
        var response = ByteBuffer(string: head)
        response.writeImmutableBuffer(body)
        self.body = body
        self.bodySHA256 = body.withUnsafeReadableBytes { TunnelClient.hex(SHA256.hash(data: $0)) }
        self.responseSize = response.readableBytes
        let shared = response
        self.channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(response: shared)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() { self.channel.close(promise: nil) }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let response: ByteBuffer
        var request = ByteBuffer()
        var answered = false

        init(response: ByteBuffer) { self.response = response }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = self.unwrapInboundIn(data)
            guard !self.answered else { return }
            self.request.writeBuffer(&buffer)
            guard TCPFrontsTests.httpHeadLength(self.request) != nil else { return }
            self.answered = true
            context.writeAndFlush(self.wrapOutboundOut(self.response)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }
}

/// Streams never open (until `failAll`, which completes every promise: NIO traps on leaked ones).
final class StallingServices: GatewayServices {
    private let pending = NIOLockedValueBox<[EventLoopPromise<any DestinationStream>]>([])
    private let records = NIOLockedValueBox<[StreamRecord]>([])

    var finished: [StreamRecord] { self.records.withLockedValue { $0 } }

    func openStream(_ request: StreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any DestinationStream> {
        let promise = eventLoop.makePromise(of: (any DestinationStream).self)
        self.pending.withLockedValue { $0.append(promise) }
        return promise.futureResult
    }

    func failAll() {
        for promise in self.pending.withLockedValue({ $0 }) {
            promise.fail(StreamOpenError(.unavailable, "test over"))
        }
    }

    func authenticate(user: String, keyType: String, keyBase64: String) -> AuthenticatedUser? { nil }
    func helpText(for identity: ClientIdentity) -> String { "" }
    func streamFinished(_ record: StreamRecord) { self.records.withLockedValue { $0.append(record) } }
}

/// Sends the same `bytes` deterministic bytes to every client as fast as it takes them, then closes.
final class FloodServer: Sendable {
    let channel: any Channel
    let sha256: String
    private let writtenBox = NIOLockedValueBox(0)
    var port: Int { self.channel.localAddress!.port! }
    var written: Int { self.writtenBox.withLockedValue { $0 } }

    init(bytes: Int) async throws {
        var body = ByteBuffer()
        body.reserveCapacity(bytes + 8)
        var state: UInt64 = 0x1234_5678_9ABC_DEF1
        while body.readableBytes < bytes {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            body.writeInteger(state)
        }
        body.moveWriterIndex(to: bytes)
        self.sha256 = body.withUnsafeReadableBytes { TunnelClient.hex(SHA256.hash(data: $0)) }
        let box = self.writtenBox
        let shared = body
        self.channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(body: shared, written: box))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() { self.channel.close(promise: nil) }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var body: ByteBuffer
        let written: NIOLockedValueBox<Int>

        init(body: ByteBuffer, written: NIOLockedValueBox<Int>) {
            self.body = body
            self.written = written
        }

        func channelActive(context: ChannelHandlerContext) { self.produce(context: context) }
        func channelWritabilityChanged(context: ChannelHandlerContext) { self.produce(context: context) }

        func produce(context: ChannelHandlerContext) {
            guard self.body.readableBytes > 0 else { return }
            while self.body.readableBytes > 0, context.channel.isWritable {
                let chunk = self.body.readSlice(length: min(self.body.readableBytes, 65536))!
                let count = chunk.readableBytes
                context.writeAndFlush(self.wrapOutboundOut(chunk)).assumeIsolated().whenSuccess {
                    self.written.withLockedValue { $0 += count }
                }
            }
            if self.body.readableBytes == 0 {
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }
}
