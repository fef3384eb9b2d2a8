import NIOCore
import NIOPosix
import Synchronization

/// How the load generator drives transfers: clients on one loop, destination servers on another,
/// both apart from the gateway's loop.
struct LoadGenerator: Sendable {
    let pattern: Pattern
    let clientLoop: any EventLoop
    let serverLoop: any EventLoop
    let stallLimit: Duration

    func destination() async throws -> Destination {
        try await Destination.start(on: self.serverLoop, pattern: self.pattern)
    }

    /// `streams` clients connect to `port` at once and each sends `bytes`; each connection that
    /// reaches `destination` checks and counts them. Timed from before the first connect to the last
    /// byte checked at the destination.
    func upload(streams: Int, bytes: Int, port: Int, destination: Destination, progress: Progress = Progress()) async throws -> Double {
        var arrivals: [EventLoopFuture<Arrival>] = []
        for _ in 0..<streams {
            let done = self.serverLoop.makePromise(of: Arrival.self)
            destination.enqueue(.sink(expected: bytes, done: done, progress: progress))
            arrivals.append(done.futureResult)
        }
        let pattern = self.pattern
        let clientLoop = self.clientLoop
        let start = ContinuousClock.now
        let clients = try await withThrowingTaskGroup(of: (any Channel).self) { group in
            for _ in 0..<streams {
                group.addTask {
                    try await connectClient(on: clientLoop, port: port) { channel in
                        try channel.pipeline.syncOperations.addHandler(PatternSender(pattern: pattern, total: bytes))
                    }
                }
            }
            return try await group.reduce(into: [any Channel]()) { $0.append($1) }
        }
        defer { for client in clients { client.close(promise: nil) } }
        let all = EventLoopFuture.whenAllSucceed(arrivals, on: self.serverLoop)
        let results = try await self.wait(for: all, progress: progress, total: streams * bytes, what: "upload of \(streams)×\(bytes) bytes")
        guard results.reduce(0, { $0 + $1.bytes }) == streams * bytes, let last = results.map(\.finished).max() else {
            throw BenchmarkError("upload: \(results.reduce(0) { $0 + $1.bytes }) bytes arrived, \(streams * bytes) were sent")
        }
        return (last - start).seconds
    }

    /// One client connects to `port`; the connection reaching `destination` sends `bytes`, which
    /// the client checks and counts. Timed from before the connect to the last byte checked.
    func download(bytes: Int, port: Int, destination: Destination) async throws -> Double {
        destination.enqueue(.source(total: bytes))
        let done = self.clientLoop.makePromise(of: Arrival.self)
        let progress = Progress()
        let pattern = self.pattern
        let start = ContinuousClock.now
        let client = try await connectClient(on: self.clientLoop, port: port) { channel in
            try channel.pipeline.syncOperations.addHandler(
                PatternReceiver(pattern: pattern, expected: bytes, done: done, progress: progress, closeWhenDone: true))
        }
        defer { client.close(promise: nil) }
        let arrival = try await self.wait(for: done.futureResult, progress: progress, total: bytes, what: "download of \(bytes) bytes")
        guard arrival.bytes == bytes else { throw BenchmarkError("download: \(arrival.bytes) bytes arrived, \(bytes) were sent") }
        return (arrival.finished - start).seconds
    }

    /// Waits for `future`; fails when no byte arrives for `stallLimit`.
    func wait<T: Sendable>(for future: EventLoopFuture<T>, progress: Progress, total: Int, what: String) async throws -> T {
        let outcome = future.eventLoop.makePromise(of: T.self)
        future.cascade(to: outcome)
        let limit = self.stallLimit
        let watchdog = Task {
            var last = -1
            var since = ContinuousClock.now
            while !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(250))  // a watchdog poll, not pacing
                let now = progress.bytes.load(ordering: .relaxed)
                if now != last {
                    last = now
                    since = .now
                } else if ContinuousClock.now - since > limit {
                    outcome.fail(BenchmarkError("\(what): no progress for \(limit) after \(now) of \(total) bytes"))
                    return
                }
            }
        }
        defer { watchdog.cancel() }
        return try await outcome.futureResult.get()
    }

    /// Connect, 1 byte out and back, close: proves the path reaches the destination (and warms a route).
    func warm(port: Int) async throws -> Duration {
        let (client, elapsed) = try await connectAndEcho(on: self.clientLoop, port: port)
        await client.close()
        return elapsed
    }

    /// `count` sequential connect + 1-byte echo + close, each timed from before the connect.
    func connectSamples(count: Int, port: () async throws -> Int) async throws -> [Duration] {
        var samples: [Duration] = []
        for _ in 0..<count {
            let target = try await port()
            let (client, elapsed) = try await connectAndEcho(on: self.clientLoop, port: target)
            samples.append(elapsed)
            await client.close()
        }
        return samples
    }
}

extension Duration {
    var seconds: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }

    var milliseconds: Double { self.seconds * 1000 }
}

/// Nearest-rank percentile of durations, in milliseconds.
func percentile(_ samples: [Duration], _ fraction: Double) -> Double {
    precondition(!samples.isEmpty)
    let sorted = samples.sorted()
    let rank = max(1, Int((fraction * Double(sorted.count)).rounded(.up)))
    return sorted[min(rank, sorted.count) - 1].milliseconds
}
