import DataChannel
import Dispatch
import NIOCore
import NIOPosix
import SSMProtocol

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An interactive shell or command session (Standard_Stream, InteractiveCommands) on this
/// process's terminal: raw keyboard input, window-size updates on SIGWINCH, Ctrl-C/Ctrl-\/Ctrl-Z
/// sent to the remote side as the official client sends them, and the exit code when the
/// remote side tells it.
public final class ShellSession: DataChannelDelegate {
    let channel: DataChannel
    let notice: NoticeSink
    var pipe: (any Channel)?
    var pendingInput: ByteBuffer?
    /// Output that arrived before stdout was set up (bounded by `dataChannelCanAcceptOutput`).
    var earlyOutput = ByteBuffer()
    var started = false
    var terminal: RawTerminal?
    var signalSources: [any DispatchSourceSignal] = []
    var lastSize: TerminalSize?
    var exitMarker = ExitMarkerScanner()
    /// The remote command's exit status, once known (ExitCode payload or the command wrapper's marker).
    public private(set) var exitCode: Int32?
    /// Completes when the session ends.
    public let ended: EventLoopPromise<DataChannelError?>

    public init(channel: DataChannel, notice: @escaping NoticeSink) {
        self.channel = channel
        self.notice = notice
        self.ended = channel.eventLoop.makePromise()
        channel.delegate = self
    }

    /// Wraps a command for AWS-StartInteractiveCommand so that its exit status comes back: the
    /// agent does not report it for pty sessions, so the command prints a marker this session
    /// removes from the output.
    public static func wrapCommand(_ command: String) -> String {
        // A subshell, so that an `exit` in the command still reaches the printf.
        "(\n\(command)\n)\nprintf '\(ExitMarkerScanner.printfPrefix)%d\(ExitMarkerScanner.printfSuffix)' \"$?\""
    }

    /// Takes over stdin/stdout (raw mode when stdin is a terminal). Call before connecting.
    public func attach(input: CInt = 0, output: CInt = 1) {
        if isatty(input) != 0 { self.terminal = RawTerminal(descriptor: input) }
        let bound = NIOLoopBound(self, eventLoop: self.channel.eventLoop)
        NIOPipeBootstrap(group: self.channel.eventLoop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { pipe in
                pipe.eventLoop.makeCompletedFuture {
                    try pipe.pipeline.syncOperations.addHandler(ShellInputHandler(session: bound.value))
                }
            }
            .takingOwnershipOfDescriptors(input: StandardStreams.readable(input), output: StandardStreams.writable(output))
            .assumeIsolated().whenComplete { result in
                let session = bound.value
                switch result {
                case .success(let pipe):
                    session.pipe = pipe
                    if session.earlyOutput.readableBytes > 0 {
                        pipe.writeAndFlush(session.earlyOutput, promise: nil)
                        session.earlyOutput = ByteBuffer()
                    }
                    if session.started { pipe.read() }
                case .failure(let error):
                    session.channel.fail(.local("Cannot use the terminal: \(error)"))
                }
            }
        self.installSignals()
    }

    func installSignals() {
        let bound = NIOLoopBound(self, eventLoop: self.channel.eventLoop)
        let loop = self.channel.eventLoop
        // Like the official client: these become the control bytes the remote terminal expects.
        let mapping: [(CInt, UInt8?)] = [(SIGINT, 0x03), (SIGQUIT, 0x1C), (SIGTSTP, 0x1A), (SIGWINCH, nil)]
        for (number, byte) in mapping {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                loop.execute {
                    let session = bound.value
                    if let byte {
                        session.sendInput(ByteBuffer(bytes: [byte]))
                    } else {
                        session.sendSize()
                    }
                }
            }
            source.resume()
            self.signalSources.append(source)
        }
    }

    func sendSize() {
        guard self.started else { return }
        let size = RawTerminal.size(of: 1) ?? RawTerminal.size(of: 0) ?? TerminalSize.fallback
        guard size != self.lastSize else { return }
        self.lastSize = size
        self.channel.send(size.encoded(), type: .size)
    }

    func sendInput(_ buffer: ByteBuffer) {
        var buffer = buffer
        if self.pendingInput != nil {
            self.pendingInput!.writeBuffer(&buffer)
            return
        }
        // A lone newline goes as carriage return (reference 7.1), as the official client sends it.
        if buffer.readableBytes == 1, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == 0x0A {
            buffer = ByteBuffer(bytes: [0x0D])
        }
        self.channel.send(splitting: &buffer)
        if buffer.readableBytes > 0 {
            self.pendingInput = buffer
        } else {
            self.pipe?.read()
        }
    }

    func restoreTerminal() {
        self.terminal?.restore()
        self.terminal = nil
        for source in self.signalSources { source.cancel() }
        self.signalSources = []
    }

    // MARK: DataChannelDelegate

    public func dataChannel(_ channel: DataChannel, didStart session: StartedSession) {
        guard !session.isPort else {
            self.notice("This document starts a port session, not a shell; use `ssmgate forward` or `ssmgate proxy`.\n")
            channel.close()
            return
        }
        self.started = true
        self.sendSize()
        self.pipe?.read()
    }

    public func dataChannelCanAcceptOutput(_ channel: DataChannel) -> Bool {
        self.pipe?.isWritable ?? (self.earlyOutput.readableBytes < 1 << 20)
    }

    public func dataChannel(_ channel: DataChannel, didReceive payload: ByteBuffer, type: PayloadType) {
        switch type {
        case .output, .standardError:
            var output = payload
            if let code = self.exitMarker.scan(&output) { self.exitCode = code }
            if output.readableBytes > 0 {
                if let pipe = self.pipe { pipe.writeAndFlush(output, promise: nil) } else { self.earlyOutput.writeBuffer(&output) }
            }
        case .exitCode:
            if let code = try? ExitCode(decoding: payload) { self.exitCode = code.value }
        default:
            break
        }
    }

    public func dataChannelDidBecomeWritable(_ channel: DataChannel) {
        guard let pending = self.pendingInput else { return }
        self.pendingInput = nil
        self.sendInput(pending)
    }

    public func dataChannel(_ channel: DataChannel, customerMessage: String) {
        self.notice(customerMessage + "\r\n")
    }

    public func dataChannel(_ channel: DataChannel, didCloseWith error: DataChannelError?) {
        let finish = {
            self.restoreTerminal()
            self.ended.succeed(error)
        }
        guard let pipe = self.pipe else {
            finish()
            return
        }
        var held = self.exitMarker.flush()
        if held.readableBytes > 0 { pipe.write(held, promise: nil) }
        held.clear()
        pipe.writeAndFlush(held).assumeIsolated().whenComplete { _ in
            pipe.close(promise: nil)
            finish()
        }
    }
}

final class ShellInputHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let session: ShellSession

    init(session: ShellSession) { self.session = session }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.session.sendInput(self.unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // The official client exits on stdin EOF; let what was typed arrive first.
            self.session.channel.closeWhenAcknowledged()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.session.channel.close()
    }
}

/// Finds and removes the exit-status marker of a wrapped command, even split across messages.
struct ExitMarkerScanner {
    static let printfPrefix = "\\033]777;ssmgate-exit="
    static let printfSuffix = "\\007"
    static let prefix: [UInt8] = Array("\u{1B}]777;ssmgate-exit=".utf8)
    var held = ByteBuffer()

    /// Removes a complete marker from `output` and returns its code; holds back a possible partial one.
    mutating func scan(_ output: inout ByteBuffer) -> Int32? {
        if self.held.readableBytes > 0 {
            var joined = self.held
            joined.writeBuffer(&output)
            output = joined
            self.held.clear()
        }
        let bytes = Array(output.readableBytesView)
        guard let escape = bytes.lastIndex(of: 0x1B) else { return nil }
        let tail = bytes[escape...]
        // A complete marker: prefix, digits (maybe a sign), BEL.
        if tail.count >= Self.prefix.count, tail.starts(with: Self.prefix) {
            let rest = tail.dropFirst(Self.prefix.count)
            guard let bell = rest.firstIndex(of: 0x07) else {
                if rest.count < 12 { self.hold(&output, from: escape) }
                return nil
            }
            let code = Int32(String(decoding: rest[rest.startIndex..<bell], as: UTF8.self))
            var cleaned = ByteBuffer()
            cleaned.writeBytes(bytes[..<escape])
            cleaned.writeBytes(bytes[(bell + 1)...])
            output = cleaned
            return code
        }
        if Self.prefix.starts(with: tail) { self.hold(&output, from: escape) }
        return nil
    }

    mutating func hold(_ output: inout ByteBuffer, from index: Int) {
        let start = output.readerIndex + index
        self.held = output.getSlice(at: start, length: output.writerIndex - start) ?? ByteBuffer()
        output.moveWriterIndex(to: start)
    }

    /// What was held back when the stream ended (it was not a marker after all).
    mutating func flush() -> ByteBuffer {
        defer { self.held.clear() }
        return self.held
    }
}

/// Puts a terminal in raw mode and restores it.
final class RawTerminal {
    let descriptor: CInt
    var saved = termios()
    var active = false

    init?(descriptor: CInt) {
        self.descriptor = descriptor
        guard tcgetattr(descriptor, &self.saved) == 0 else { return nil }
        var raw = self.saved
        cfmakeraw(&raw)
        // Keep output processing: the remote pty's output is shown as it would be locally.
        raw.c_oflag = self.saved.c_oflag
        guard tcsetattr(descriptor, TCSANOW, &raw) == 0 else { return nil }
        self.active = true
    }

    func restore() {
        guard self.active else { return }
        self.active = false
        _ = tcsetattr(self.descriptor, TCSANOW, &self.saved)
    }

    deinit { self.restore() }

    static func size(of descriptor: CInt) -> TerminalSize? {
        var size = winsize()
        guard ioctl(descriptor, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0, size.ws_row > 0 else { return nil }
        return TerminalSize(columns: UInt32(size.ws_col), rows: UInt32(size.ws_row))
    }
}
