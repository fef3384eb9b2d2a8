import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Checks a user name and password (SOCKS5 RFC 1929, HTTP `Proxy-Authorization: Basic`) and
/// returns the user name the connection runs as, or nil to refuse.
public typealias PasswordCheck = @Sendable (_ user: String, _ password: String) -> String?

/// Open connections of one front, for metrics: `open` now, `accepted` since the front started.
public final class FrontConnectionCounter: Sendable {
    private let openCount = Atomic<Int>(0)
    private let acceptedCount = Atomic<Int>(0)

    public init() {}

    public var open: Int { self.openCount.load(ordering: .relaxed) }
    public var accepted: Int { self.acceptedCount.load(ordering: .relaxed) }

    func connectionOpened() {
        self.openCount.add(1, ordering: .relaxed)
        self.acceptedCount.add(1, ordering: .relaxed)
    }

    func connectionClosed() {
        self.openCount.subtract(1, ordering: .relaxed)
    }
}

enum FrontBootstrap {
    /// The listener every TCP front uses: accepted sockets start with reads off (the front asks for
    /// bytes only when it can use them) and keep half-closed input (a client's EOF is not a close).
    static func bind(
        group: any EventLoopGroup, host: String, port: Int, counter: FrontConnectionCounter,
        childInitializer: @escaping @Sendable (any Channel) throws -> Void
    ) -> EventLoopFuture<any Channel> {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // What the socket may hold unsent before the destination is held back.
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 64 * 1024, high: 256 * 1024))
            .childChannelInitializer { channel in
                counter.connectionOpened()
                channel.closeFuture.whenComplete { _ in counter.connectionClosed() }
                return channel.eventLoop.makeCompletedFuture { try childInitializer(channel) }
            }
            .bind(host: host, port: port)
    }
}

/// One `openStream` call with a deadline, reporting exactly once on the channel's loop. A stream
/// that arrives after the deadline or after the client left is aborted.
final class StreamOpening {
    private var reported = false
    private var timeout: Scheduled<Void>?

    private init() {}

    static func start(
        services: any GatewayServices, request: StreamRequest, channel: any Channel, timeout: TimeAmount,
        completion: @escaping (Result<any DestinationStream, StreamOpenError>) -> Void
    ) {
        let loop = channel.eventLoop
        loop.preconditionInEventLoop()
        let opening = StreamOpening()
        opening.timeout = loop.assumeIsolated().scheduleTask(in: timeout) {
            guard !opening.reported else { return }
            opening.reported = true
            completion(.failure(StreamOpenError(
                .unavailable,
                "Opening a stream to \(request.host):\(request.port) took longer than \(describe(timeout)); try again, or check the gateway's log.")))
        }
        // `openStream` completes on `loop` (GatewayServices: the stream is bound to it).
        services.openStream(request, on: loop).assumeIsolated().whenComplete { result in
            opening.timeout?.cancel()
            guard !opening.reported else {
                if case .success(let stream) = result { stream.abort() }
                return
            }
            opening.reported = true
            switch result {
            case .success(let stream):
                if channel.isActive {
                    completion(.success(stream))
                } else {
                    stream.abort()
                    completion(.failure(StreamOpenError(.unavailable, "The client left before the stream opened.")))
                }
            case .failure(let error as StreamOpenError):
                completion(.failure(error))
            case .failure(let error):
                completion(.failure(StreamOpenError(.sessionFailed, "Cannot open a stream to \(request.host):\(request.port): \(error)")))
            }
        }
    }
}

/// "300 ms", "60 s".
func describe(_ time: TimeAmount) -> String {
    let milliseconds = time.nanoseconds / 1_000_000
    return milliseconds < 1000 || milliseconds % 1000 != 0 ? "\(milliseconds) ms" : "\(milliseconds / 1000) s"
}

extension GatewayServices {
    /// The record of a connection whose stream never opened.
    func recordOpenFailure(_ request: StreamRequest, opened: NIODeadline, error: StreamOpenError) {
        self.streamFinished(StreamRecord(
            request: request, route: nil, bytesFromClient: 0, bytesToClient: 0,
            opened: opened, closed: .now(), outcome: "\(error.kind.rawValue): \(error.message)"))
    }
}

extension Channel {
    /// "ip:port" of the peer, for `ClientIdentity.sourceAddress`.
    var peerDescription: String {
        guard let address = self.remoteAddress, let ip = address.ipAddress, let port = address.port else {
            return self.remoteAddress?.description ?? "unknown"
        }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}

/// Writes `buffer` (if any), flushes, and closes once it is out.
func flushAndClose(_ context: ChannelHandlerContext, _ buffer: ByteBuffer? = nil) {
    context.writeAndFlush(NIOAny(buffer ?? context.channel.allocator.buffer(capacity: 0))).assumeIsolated().whenComplete { _ in
        context.close(promise: nil)
    }
}
