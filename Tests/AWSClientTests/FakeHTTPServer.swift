import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import SigV4
import Synchronization

/// A loopback HTTP server on an OS-chosen port that records every request and answers through a closure:
/// stands in for STS, the SSO portal, the ECS credentials endpoint and IMDS.
final class FakeHTTPServer: Sendable {
    struct Request: Sendable {
        var method: String
        var uri: String
        var headers: [(name: String, value: String)]
        var body: [UInt8]

        var path: String { String(self.uri.prefix { $0 != "?" }) }
        var query: String {
            guard let mark = self.uri.firstIndex(of: "?") else { return "" }
            return String(self.uri[self.uri.index(after: mark)...])
        }
        var bodyText: String { String(decoding: self.body, as: UTF8.self) }

        func header(_ name: String) -> String? {
            self.headers.first { $0.name.lowercased() == name.lowercased() }?.value
        }

        /// The form body (Query protocol) or query string, decoded.
        var form: [String: String] {
            let text = self.method == "GET" ? self.query : self.bodyText
            var result: [String: String] = [:]
            for pair in text.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = String(parts[0]).removingPercentEncoding ?? String(parts[0])
                let value = parts.count > 1 ? (String(parts[1]).removingPercentEncoding ?? String(parts[1])) : ""
                result[key] = value
            }
            return result
        }

        var sigV4: SigV4Request {
            SigV4Request(method: self.method, path: self.path, query: self.query, headers: self.headers, body: self.body)
        }
    }

    struct Response: Sendable {
        var status: Int
        var headers: [(String, String)]
        var body: String

        init(status: Int = 200, headers: [(String, String)] = [], body: String = "") {
            self.status = status
            self.headers = headers
            self.body = body
        }

        static func json(_ object: Any, status: Int = 200) -> Response {
            let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            return Response(status: status, headers: [("Content-Type", "application/json")], body: String(decoding: data, as: UTF8.self))
        }
    }

    typealias Handler = @Sendable (Request) async -> Response

    private let channel: any Channel
    private let recorded: Mutex<[Request]>

    private init(channel: any Channel) {
        self.channel = channel
        self.recorded = Mutex([])
    }

    var port: Int { self.channel.localAddress?.port ?? 0 }
    var baseURL: String { "http://127.0.0.1:\(self.port)" }
    var requests: [Request] { self.recorded.withLock { $0 } }

    static func start(_ handler: @escaping Handler) async throws -> FakeHTTPServer {
        let log = Recorder()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(FakeHTTPHandler(handler: handler, recorder: log))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let server = FakeHTTPServer(channel: channel)
        log.server.withLock { $0 = server }
        return server
    }

    func record(_ request: Request) { self.recorded.withLock { $0.append(request) } }

    func stop() async {
        try? await self.channel.close()
    }

    /// Runs `body` with a started server, stopping it afterwards whatever happens.
    static func with<T>(_ handler: @escaping Handler, _ body: (FakeHTTPServer) async throws -> T) async throws -> T {
        let server = try await FakeHTTPServer.start(handler)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }
}

/// Lets child handlers reach the server created after the bootstrap.
final class Recorder: Sendable {
    let server = Mutex<FakeHTTPServer?>(nil)
    func record(_ request: FakeHTTPServer.Request) { self.server.withLock { $0 }?.record(request) }
}

private final class FakeHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let handler: FakeHTTPServer.Handler
    let recorder: Recorder
    var head: HTTPRequestHead?
    var body: [UInt8] = []

    init(handler: @escaping FakeHTTPServer.Handler, recorder: Recorder) {
        self.handler = handler
        self.recorder = recorder
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = []
        case .body(let chunk):
            self.body += chunk.readableBytesView
        case .end:
            guard let head = self.head else { return }
            let request = FakeHTTPServer.Request(
                method: head.method.rawValue, uri: head.uri, headers: head.headers.map { (name: $0.name, value: $0.value) },
                body: self.body)
            self.recorder.record(request)
            let handler = self.handler
            let channel = context.channel
            let keepAlive = head.isKeepAlive
            Task {
                let response = await handler(request)
                var headers = HTTPHeaders(response.headers)
                headers.replaceOrAdd(name: "Content-Length", value: String(response.body.utf8.count))
                headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
                let responseHead = HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
                channel.write(HTTPServerResponsePart.head(responseHead), promise: nil)
                channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: response.body))), promise: nil)
                channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in
                    if !keepAlive { channel.close(promise: nil) }
                }
            }
        }
    }
}
