import NIOCore
import SSMProtocol
import Synchronization
import Yams

/// What goes wrong, on purpose, for one session or for all: the emulator's fault injection.
///
/// Frame faults (delay, drop, duplicate, reorder, corrupt) and WebSocket drops act in the MGS
/// relay, on frames as they leave it; a refused port acts in the simulated agent's dial. Every
/// rate is a fraction of frames in [0, 1], drawn from a seeded generator so runs repeat.
public struct FaultSpec: Sendable, Equatable {
    /// Which way frame faults act: frames on their way to the agent, to the client, or both.
    public enum Direction: String, Sendable, Equatable, CaseIterable {
        case both
        case toAgent
        case toClient
    }

    /// Closing one side's WebSocket as a network failure would (no `channel_closed`).
    public struct WebSocketDrop: Sendable, Equatable {
        public enum Side: String, Sendable, Equatable, CaseIterable {
            case client
            case agent
        }
        public enum Trigger: Sendable, Equatable {
            /// After every N frames the relay passes for the session (either direction).
            case everyFrames(Int)
            /// Every N seconds.
            case everySeconds(Int)
        }
        public var side: Side
        public var trigger: Trigger

        public init(side: Side, trigger: Trigger) {
            self.side = side
            self.trigger = trigger
        }
    }

    public var delayMilliseconds = 0
    /// Up to this much more, uniformly; order is kept (reordering is its own fault).
    public var jitterMilliseconds = 0
    public var dropRate = 0.0
    public var duplicateRate = 0.0
    /// Swaps a frame with the one after it (a frame with no successor within 10 ms goes alone).
    public var reorderRate = 0.0
    /// Flips one payload byte, so the digest no longer matches.
    public var corruptRate = 0.0
    public var direction = Direction.both
    public var webSocketDrop: WebSocketDrop?
    /// Destination ports the agent's dial is refused on (`ConnectToPortError`, or a failed basic session).
    public var refusedPorts: Set<Int> = []

    public init() {}

    /// True when some frame fault is set (the relay then takes its slower path for this session).
    var touchesFrames: Bool {
        self.delayMilliseconds > 0 || self.jitterMilliseconds > 0 || self.dropRate > 0 || self.duplicateRate > 0
            || self.reorderRate > 0 || self.corruptRate > 0
    }

    func acts(on role: SessionRegistry.Role) -> Bool {
        switch self.direction {
        case .both: return true
        case .toAgent: return role == .client
        case .toClient: return role == .agent
        }
    }
}

/// Global and per-session faults, as set in the configuration file or through the admin endpoint.
/// A session's own spec replaces the global one for that session (they are not merged).
public struct FaultConfiguration: Sendable, Equatable {
    public var seed: UInt64 = 1
    public var global: FaultSpec?
    public var sessions: [String: FaultSpec] = [:]

    public init(seed: UInt64 = 1, global: FaultSpec? = nil, sessions: [String: FaultSpec] = [:]) {
        self.seed = seed
        self.global = global
        self.sessions = sessions
    }

    public var isEmpty: Bool { self.global == nil && self.sessions.isEmpty }

    func spec(for sessionID: String) -> FaultSpec? { self.sessions[sessionID] ?? self.global }
}

/// The live fault configuration, shared by MGS's relays and the simulated agents.
///
/// The relay's hot path reads one atomic flag; only while some fault is set does it look further.
public final class FaultInjector: Sendable {
    private let configuration: Mutex<FaultConfiguration>
    private let active: Atomic<Bool>
    /// Bumped on every change, so relays can keep the spec they looked up until it changes.
    private let generationCounter = Atomic<Int>(0)

    public init(_ configuration: FaultConfiguration = FaultConfiguration()) {
        self.configuration = Mutex(configuration)
        self.active = Atomic(!configuration.isEmpty)
    }

    public var current: FaultConfiguration { self.configuration.withLock { $0 } }

    var isActive: Bool { self.active.load(ordering: .relaxed) }
    var generation: Int { self.generationCounter.load(ordering: .acquiring) }

    public func update(_ change: (inout FaultConfiguration) -> Void) {
        self.configuration.withLock { configuration in
            change(&configuration)
            self.active.store(!configuration.isEmpty, ordering: .relaxed)
            self.generationCounter.add(1, ordering: .releasing)
        }
    }

    func spec(for sessionID: String) -> FaultSpec? {
        guard self.isActive else { return nil }
        return self.configuration.withLock { $0.spec(for: sessionID) }
    }

    func refuses(port: Int, sessionID: String) -> Bool {
        self.spec(for: sessionID)?.refusedPorts.contains(port) ?? false
    }

    func seed(for sessionID: String) -> UInt64 {
        // FNV-1a: stable across runs, unlike Hasher.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in sessionID.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return self.current.seed ^ hash
    }
}

// MARK: - The relay's per-direction fault state

/// A seedable generator: fault decisions repeat for the same seed and frame sequence.
typealias FaultRandom = SplitMix64

/// Frame faults for one direction of one session: a pure value, so the rules can be tested alone.
struct FrameFaults: Sendable {
    var random: FaultRandom
    /// A frame waiting to swap places with the next one, and a number telling holds apart.
    var reorderSlot: (frame: ByteBuffer, id: UInt64)?
    var reorderCounter: UInt64 = 0
    /// Release time of the last delayed frame: later frames never leave before it.
    var lastRelease: UInt64 = 0
    var dropped = 0
    var duplicated = 0
    var reordered = 0
    var corrupted = 0

    init(seed: UInt64) { self.random = FaultRandom(seed: seed) }

    struct Outcome {
        /// Frames to send now (before any delay), in order.
        var frames: [ByteBuffer] = []
        /// Set when this frame was put aside to swap with the next: the hold's id, for its timeout.
        var heldForReorder: UInt64?
    }

    /// Applies drop, corrupt, duplicate and reorder to one frame.
    mutating func apply(_ frame: ByteBuffer, spec: FaultSpec) -> Outcome {
        var outcome = Outcome()
        var frame = frame
        if self.random.chance(spec.dropRate) {
            self.dropped += 1
            // A dropped frame is still "the next one" for a held frame: that one goes now.
            if let held = self.reorderSlot.take() { outcome.frames.append(held.frame) }
            return outcome
        }
        if self.random.chance(spec.corruptRate), Self.corrupt(&frame, random: &self.random) { self.corrupted += 1 }
        var copies = [frame]
        if self.random.chance(spec.duplicateRate) {
            copies.append(frame)
            self.duplicated += 1
        }
        if let held = self.reorderSlot.take() {
            outcome.frames = copies + [held.frame]
            self.reordered += 1
        } else if self.random.chance(spec.reorderRate) {
            self.reorderCounter += 1
            self.reorderSlot = (copies[0], self.reorderCounter)
            outcome.frames = Array(copies.dropFirst())
            outcome.heldForReorder = self.reorderCounter
        } else {
            outcome.frames = copies
        }
        return outcome
    }

    /// The held frame, if it is still the hold `id` (nobody came to swap with it in time).
    mutating func releaseHeld(id: UInt64) -> ByteBuffer? {
        guard let held = self.reorderSlot, held.id == id else { return nil }
        self.reorderSlot = nil
        return held.frame
    }

    /// Release times for `count` frames: `delay` plus jitter from `now`, never earlier than the last.
    mutating func releaseTimes(count: Int, spec: FaultSpec, now: UInt64) -> [UInt64] {
        (0..<count).map { _ in
            var wait = UInt64(spec.delayMilliseconds) * 1_000_000
            if spec.jitterMilliseconds > 0 { wait += self.random.next() % (UInt64(spec.jitterMilliseconds) * 1_000_000) }
            let release = max(now + wait, self.lastRelease + 1)
            self.lastRelease = release
            return release
        }
    }

    /// Flips one byte of the AgentMessage payload (which starts at byte 120); false for frames without one.
    static func corrupt(_ frame: inout ByteBuffer, random: inout FaultRandom) -> Bool {
        let payloadStart = AgentMessage.headerSize
        let payloadLength = frame.readableBytes - payloadStart
        guard payloadLength > 0 else { return false }
        let index = frame.readerIndex + payloadStart + Int(random.next() % UInt64(payloadLength))
        guard let byte = frame.getInteger(at: index, as: UInt8.self) else { return false }
        frame.setInteger(byte ^ 0xFF, at: index)  // copies the shared storage: only corrupted frames pay
        return true
    }
}

// MARK: - Reading and writing specs (YAML in the file, JSON on the admin endpoint)

extension FaultConfiguration {
    static let keys: Set<String> = ["seed", "global", "sessions"]

    /// Reads a `faults:` mapping; JSON bodies of the admin endpoint go through the same reader.
    static func read(_ node: Node, key: String, reader: YAMLReader) throws(ConfigurationError) -> FaultConfiguration {
        let entries = try reader.mapping(node, key: key)
        try reader.allowOnly(Self.keys, in: entries, key: key)
        var configuration = FaultConfiguration()
        if let seed = entries["seed"] {
            let text = try reader.string(seed, key: "\(key).seed")
            guard let value = UInt64(text) else { throw reader.error("\(key).seed", seed, "is '\(text)'; expected a whole number ≥ 0") }
            configuration.seed = value
        }
        if let global = entries["global"], !reader.isNull(global) {
            configuration.global = try FaultSpec.read(global, key: "\(key).global", reader: reader)
        }
        if let sessions = entries["sessions"] {
            for (id, spec) in try reader.mapping(sessions, key: "\(key).sessions") {
                configuration.sessions[id] = try FaultSpec.read(spec, key: "\(key).sessions.\(id)", reader: reader)
            }
        }
        return configuration
    }

    var json: JSONValue {
        .object([
            ("seed", .integer(self.seed)),
            ("global", self.global?.json ?? .null),
            ("sessions", .object(self.sessions.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) })),
        ])
    }
}

extension FaultSpec {
    static let keys: Set<String> = [
        "delayMs", "jitterMs", "drop", "duplicate", "reorder", "corrupt", "direction", "dropWebSocket", "refusePorts",
    ]

    static func read(_ node: Node, key: String, reader: YAMLReader) throws(ConfigurationError) -> FaultSpec {
        if reader.isNull(node) { return FaultSpec() }
        let entries = try reader.mapping(node, key: key)
        try reader.allowOnly(Self.keys, in: entries, key: key)
        var spec = FaultSpec()
        if let value = entries["delayMs"] { spec.delayMilliseconds = try reader.integer(value, key: "\(key).delayMs", in: 0...600_000) }
        if let value = entries["jitterMs"] { spec.jitterMilliseconds = try reader.integer(value, key: "\(key).jitterMs", in: 0...600_000) }
        if let value = entries["drop"] { spec.dropRate = try reader.fraction(value, key: "\(key).drop") }
        if let value = entries["duplicate"] { spec.duplicateRate = try reader.fraction(value, key: "\(key).duplicate") }
        if let value = entries["reorder"] { spec.reorderRate = try reader.fraction(value, key: "\(key).reorder") }
        if let value = entries["corrupt"] { spec.corruptRate = try reader.fraction(value, key: "\(key).corrupt") }
        if let value = entries["direction"] { spec.direction = try reader.choice(value, key: "\(key).direction", as: Direction.self) }
        if let value = entries["dropWebSocket"], !reader.isNull(value) {
            spec.webSocketDrop = try WebSocketDrop.read(value, key: "\(key).dropWebSocket", reader: reader)
        }
        if let value = entries["refusePorts"] {
            for item in try reader.sequence(value, key: "\(key).refusePorts") {
                spec.refusedPorts.insert(try reader.integer(item, key: "\(key).refusePorts", in: 1...65535))
            }
        }
        return spec
    }

    var json: JSONValue {
        var members: [(String, JSONValue)] = [
            ("delayMs", .integer(self.delayMilliseconds)),
            ("jitterMs", .integer(self.jitterMilliseconds)),
            ("drop", .number("\(self.dropRate)")),
            ("duplicate", .number("\(self.duplicateRate)")),
            ("reorder", .number("\(self.reorderRate)")),
            ("corrupt", .number("\(self.corruptRate)")),
            ("direction", .string(self.direction.rawValue)),
            ("refusePorts", .array(self.refusedPorts.sorted().map { .integer($0) })),
        ]
        if let drop = self.webSocketDrop {
            let trigger: (String, JSONValue)
            switch drop.trigger {
            case .everyFrames(let n): trigger = ("everyFrames", .integer(n))
            case .everySeconds(let n): trigger = ("everySeconds", .integer(n))
            }
            members.append(("dropWebSocket", .object([("side", .string(drop.side.rawValue)), trigger])))
        } else {
            members.append(("dropWebSocket", .null))
        }
        return .object(members)
    }
}

extension FaultSpec.WebSocketDrop {
    static func read(_ node: Node, key: String, reader: YAMLReader) throws(ConfigurationError) -> Self {
        let entries = try reader.mapping(node, key: key)
        try reader.allowOnly(["side", "everyFrames", "everySeconds"], in: entries, key: key)
        guard let sideNode = entries["side"] else { throw ConfigurationError(file: reader.file, key: "\(key).side", problem: "is missing") }
        let side = try reader.choice(sideNode, key: "\(key).side", as: Side.self)
        switch (entries["everyFrames"], entries["everySeconds"]) {
        case (let frames?, nil):
            return Self(side: side, trigger: .everyFrames(try reader.integer(frames, key: "\(key).everyFrames", in: 1...Int(Int32.max))))
        case (nil, let seconds?):
            return Self(side: side, trigger: .everySeconds(try reader.integer(seconds, key: "\(key).everySeconds", in: 1...86_400)))
        default:
            throw reader.error(key, node, "needs exactly one of everyFrames or everySeconds (to drop once, use POST /admin/sessions/<id>/drop)")
        }
    }
}
