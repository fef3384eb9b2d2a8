import Crypto
import Foundation
import NIOCore
import NIOHTTP1

/// The opening handshake's key arithmetic (RFC 6455 section 4.2.2).
public enum WebSocketHandshake {
    static let acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// The `Sec-WebSocket-Accept` value that proves a server read the client's `Sec-WebSocket-Key`.
    public static func acceptValue(forKey key: String) -> String {
        Data(Insecure.SHA1.hash(data: Array((key + Self.acceptGUID).utf8))).base64EncodedString()
    }

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
    public static func makeKey() -> String {
        var generator = SystemRandomNumberGenerator()
        return Data((0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) }).base64EncodedString()
    }
}

/// The client half of the upgrade, for `NIOHTTPClientUpgradeHandler`: it installs
/// `WebSocketFrameCodec` (and nothing of NIO's WebSocket module), then the caller's handlers.
public final class WebSocketClientUpgrader: NIOHTTPClientProtocolUpgrader, Sendable {
    public let supportedProtocol = "websocket"
    public let requiredUpgradeHeaders: [String] = []
    let key: String
    let maximumMessageSize: Int
    let upgradePipelineHandler: @Sendable (any Channel, HTTPResponseHead) -> EventLoopFuture<Void>

    public init(
        maximumMessageSize: Int,
        upgradePipelineHandler: @escaping @Sendable (any Channel, HTTPResponseHead) -> EventLoopFuture<Void>
    ) {
        self.key = WebSocketHandshake.makeKey()
        self.maximumMessageSize = maximumMessageSize
        self.upgradePipelineHandler = upgradePipelineHandler
    }

    public func addCustom(upgradeRequestHeaders: inout HTTPHeaders) {
        upgradeRequestHeaders.replaceOrAdd(name: "Sec-WebSocket-Key", value: self.key)
        upgradeRequestHeaders.replaceOrAdd(name: "Sec-WebSocket-Version", value: "13")
    }

    /// Only a 101 that answers our own key, with no extension or subprotocol we did not ask for.
    public func shouldAllowUpgrade(upgradeResponse: HTTPResponseHead) -> Bool {
        let accept = upgradeResponse.headers["Sec-WebSocket-Accept"]
        return accept.count == 1 && accept[0] == WebSocketHandshake.acceptValue(forKey: self.key)
            && upgradeResponse.headers["Sec-WebSocket-Extensions"].isEmpty
    }

    public func upgrade(context: ChannelHandlerContext, upgradeResponse: HTTPResponseHead) -> EventLoopFuture<Void> {
        installFrameCodec(role: .client, maximumMessageSize: self.maximumMessageSize, context: context) {
            self.upgradePipelineHandler(context.channel, upgradeResponse)
        }
    }
}

/// The server half of the upgrade, for `HTTPServerUpgradeHandler`: checks the version and key,
/// answers with the accept value, installs `WebSocketFrameCodec`, then the caller's handlers.
public final class WebSocketServerUpgrader: HTTPServerProtocolUpgrader, Sendable {
    public let supportedProtocol = "websocket"
    public let requiredUpgradeHeaders: [String] = []
    let maximumMessageSize: Int
    let shouldUpgrade: @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?>
    let upgradePipelineHandler: @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<Void>

    /// Why an upgrade request was turned down (the HTTP handler answers it with an error status).
    public enum RefusalReason: Error, Hashable, Sendable {
        case unsupportedVersion
        case invalidKey
        case refusedByServer
    }

    /// `shouldUpgrade` answers extra response headers to accept, or nil to refuse.
    public init(
        maximumMessageSize: Int,
        shouldUpgrade: @escaping @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?>,
        upgradePipelineHandler: @escaping @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<Void>
    ) {
        self.maximumMessageSize = maximumMessageSize
        self.shouldUpgrade = shouldUpgrade
        self.upgradePipelineHandler = upgradePipelineHandler
    }

    public func buildUpgradeResponse(
        channel: any Channel, upgradeRequest: HTTPRequestHead, initialResponseHeaders: HTTPHeaders
    ) -> EventLoopFuture<HTTPHeaders> {
        let keys = upgradeRequest.headers["Sec-WebSocket-Key"]
        guard upgradeRequest.headers["Sec-WebSocket-Version"] == ["13"] else {
            return channel.eventLoop.makeFailedFuture(RefusalReason.unsupportedVersion)
        }
        guard keys.count == 1, let decoded = Data(base64Encoded: keys[0]), decoded.count == 16 else {
            return channel.eventLoop.makeFailedFuture(RefusalReason.invalidKey)
        }
        let accept = WebSocketHandshake.acceptValue(forKey: keys[0])
        return self.shouldUpgrade(channel, upgradeRequest).flatMapThrowing { extra in
            guard let extra else { throw RefusalReason.refusedByServer }
            var headers = initialResponseHeaders
            headers.add(contentsOf: extra)
            headers.replaceOrAdd(name: "Sec-WebSocket-Accept", value: accept)
            return headers
        }
    }

    public func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        installFrameCodec(role: .server, maximumMessageSize: self.maximumMessageSize, context: context) {
            self.upgradePipelineHandler(context.channel, upgradeRequest)
        }
    }
}

/// Adds the frame codec where the HTTP handlers were, then hands the channel to the caller.
private func installFrameCodec(
    role: WebSocketFrameCodec.Role, maximumMessageSize: Int, context: ChannelHandlerContext,
    then installCallerHandlers: () -> EventLoopFuture<Void>
) -> EventLoopFuture<Void> {
    do {
        try context.pipeline.syncOperations.addHandler(WebSocketFrameCodec(role: role, maximumMessageSize: maximumMessageSize))
    } catch {
        return context.eventLoop.makeFailedFuture(error)
    }
    return installCallerHandlers()
}
