import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// The gateway's Prometheus metrics: sessions, streams, bytes, open latency, errors by kind.
/// One registry per gateway (no global bootstrap), so tests can run several gateways at once.
public final class GatewayMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let pooledSessionsGauge: Gauge
    let openStreamsGauge: Gauge
    let streamsTotal: Counter
    let pooledStreamsTotal: Counter
    let sessionsStarted: Counter
    let sessionsFailed: Counter
    let sessionStartSeconds: ValueHistogram
    let openSeconds: ValueHistogram
    let errors = NIOLockedValueBox<[String: Counter]>([:])
    let bytes = NIOLockedValueBox<[String: Counter]>([:])

    public init() {
        self.pooledSessionsGauge = self.registry.makeGauge(descriptor: .init(namespace: "ssmgate", metricName: "pooled", unitName: "sessions", helpText: "Open pooled (mux) sessions"))
        self.openStreamsGauge = self.registry.makeGauge(descriptor: .init(namespace: "ssmgate", metricName: "open", unitName: "streams", helpText: "Relayed connections now open"))
        self.streamsTotal = self.registry.makeCounter(descriptor: .init(namespace: "ssmgate", metricName: "streams", unitName: "total", helpText: "Relayed connections opened"))
        self.pooledStreamsTotal = self.registry.makeCounter(descriptor: .init(namespace: "ssmgate", metricName: "pooled_streams", unitName: "total", helpText: "Connections carried as smux streams on pooled sessions"))
        self.sessionsStarted = self.registry.makeCounter(descriptor: .init(namespace: "ssmgate", metricName: "sessions_started", unitName: "total", helpText: "Sessions started"))
        self.sessionsFailed = self.registry.makeCounter(descriptor: .init(namespace: "ssmgate", metricName: "sessions_failed", unitName: "total", helpText: "Session starts that failed"))
        self.sessionStartSeconds = self.registry.makeValueHistogram(descriptor: .init(namespace: "ssmgate", metricName: "session_start", unitName: "seconds", helpText: "Time to start a session"), buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30])
        self.openSeconds = self.registry.makeValueHistogram(
            descriptor: .init(namespace: "ssmgate", metricName: "stream_open", unitName: "seconds",
                              helpText: "Time from a front's request to an open destination stream"),
            buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
    }

    func sessionStarting() {}
    func sessionStarted(seconds: Double) {
        self.sessionsStarted.increment()
        self.sessionStartSeconds.record(seconds)
    }
    func sessionFailed() { self.sessionsFailed.increment() }
    func pooledSessions(_ count: Int) { self.pooledSessionsGauge.set(Double(count)) }
    func streamOpened(pooled: Bool) {
        self.streamsTotal.increment()
        if pooled { self.pooledStreamsTotal.increment() }
        self.openStreamsGauge.increment()
    }
    func streamClosed() { self.openStreamsGauge.decrement() }
    func opened(seconds: Double) { self.openSeconds.record(seconds) }

    /// Counts an error by kind (`denied`, `unknown_target`, `session_failed`, `session_lost`, …).
    public func error(kind: String) {
        let counter = self.errors.withLockedValue { counters in
            if let counter = counters[kind] { return counter }
            let counter = self.registry.makeCounter(descriptor: .init(namespace: "ssmgate", metricName: "errors", unitName: "total", helpText: "Errors by kind"), labels: [("kind", kind)])
            counters[kind] = counter
            return counter
        }
        counter.increment()
    }

    /// Adds relayed bytes, per front and direction.
    public func relayed(front: FrontKind, fromClient: Int, toClient: Int) {
        for (direction, amount) in [("from_client", fromClient), ("to_client", toClient)] where amount > 0 {
            let key = "\(front.rawValue)/\(direction)"
            let counter = self.bytes.withLockedValue { counters in
                if let counter = counters[key] { return counter }
                let counter = self.registry.makeCounter(
                    descriptor: .init(namespace: "ssmgate", metricName: "relayed_bytes", unitName: "total", helpText: "Bytes relayed"),
                    labels: [("front", front.rawValue), ("direction", direction)])
                counters[key] = counter
                return counter
            }
            counter.increment(by: Int64(amount))
        }
    }

    public func render() -> String { self.registry.emitToString() }

    /// Serves `GET /metrics` in the Prometheus text format.
    public func serve(host: String, port: Int, group: any EventLoopGroup) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(metrics: self))
                }
            }
            .bind(host: host, port: port).get()
    }
}

final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let metrics: GatewayMetrics
    var path = ""

    init(metrics: GatewayMetrics) { self.metrics = metrics }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = head.uri
        case .body:
            break
        case .end:
            let found = self.path == "/metrics" || self.path.hasPrefix("/metrics?")
            let body = found ? self.metrics.render() : "Not found: metrics are at /metrics\n"
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4" : "text/plain")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
