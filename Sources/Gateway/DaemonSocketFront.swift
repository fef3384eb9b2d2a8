import Foundation
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The unix socket through which `ssmgate proxy HOST PORT` (an ssh ProxyCommand) uses a running
/// daemon's warm pool: the client sends one line `CONNECT host port`, gets `OK` or
/// `ERR message`, then the socket is the stream. The socket is created 0600: only the user who
/// runs the daemon can use it, and streams are audited as that user.
public final class DaemonSocketFront: Sendable {
    public let services: any GatewayServices
    public let group: any EventLoopGroup
    public let path: String
    let user: String
    let logger: Logger

    public init(services: any GatewayServices, path: String, user: String, group: any EventLoopGroup, logger: Logger = Logger(label: "ssmgate.daemon")) {
        self.services = services
        self.path = path
        self.user = user
        self.group = group
        self.logger = logger
    }

    public func bind() async throws -> any Channel {
        let directory = (self.path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        // A socket file left by a daemon that died is replaced; a live daemon's is not, nor anything else.
        var existing = stat()
        if lstat(self.path, &existing) == 0 {
            guard existing.st_mode & S_IFMT == S_IFSOCK else {
                throw DaemonSocketError("\(self.path) exists and is not a socket; remove it or set listen.daemon_socket")
            }
            if DaemonSocketClient.isAlive(path: self.path) {
                throw DaemonSocketError("another ssmgate daemon already listens on \(self.path); stop it or set listen.daemon_socket")
            }
        }
        let services = self.services
        let user = self.user
        let logger = self.logger
        // Bound under a hidden temporary name, made owner-only, then renamed into place: the socket
        // is never at its path with wider permissions. Not through umask: that is per process, and
        // setting it across this await changed the mode of whatever other threads created meanwhile.
        let temporary = "\(directory)/.\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        let channel = try await ServerBootstrap(group: self.group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DaemonRequestHandler(services: services, user: user, logger: logger))
                }
            }
            .bind(unixDomainSocketPath: temporary, cleanupExistingSocketFile: true).get()
        var failure: String?
        if chmod(temporary, 0o600) != 0 {
            failure = "cannot make \(temporary) owner-only: \(String(cString: strerror(errno)))"
        } else if rename(temporary, self.path) != 0 {
            failure = "cannot move the daemon socket to \(self.path): \(String(cString: strerror(errno)))"
        }
        if let failure {
            try? await channel.close()
            unlink(temporary)
            throw DaemonSocketError(failure)
        }
        return channel
    }
}

public struct DaemonSocketError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Reads the request line, opens the stream, answers, and hands the socket to a SocketRelay.
final class DaemonRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let services: any GatewayServices
    let user: String
    let logger: Logger
    var buffered = ByteBuffer()
    var handled = false
    var inputClosed = false

    init(services: any GatewayServices, user: String, logger: Logger) {
        self.services = services
        self.user = user
        self.logger = logger
    }

    func channelActive(context: ChannelHandlerContext) {
        context.read()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        self.buffered.writeBuffer(&bytes)
        guard !self.handled else { return }
        guard let newline = self.buffered.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if self.buffered.readableBytes > 1024 { self.reply(context, "ERR request line too long") }
            return
        }
        self.handled = true
        let length = newline - self.buffered.readerIndex
        let line = self.buffered.readString(length: length) ?? ""
        self.buffered.moveReaderIndex(forwardBy: 1)
        let fields = line.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
        guard fields.count == 3, fields[0] == "CONNECT", let port = Int(fields[2]) else {
            self.reply(context, "ERR expected `CONNECT host port`")
            return
        }
        let request = StreamRequest(
            host: String(fields[1]), port: port,
            identity: ClientIdentity(user: self.user, sourceAddress: "unix:\(context.channel.localAddress?.pathname ?? "")", front: .daemon))
        let opened = NIODeadline.now()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        // The gateway's streams live on the loop of the front that asks (one loop for the data plane).
        self.services.openStream(request, on: context.eventLoop).assumeIsolated().whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let destination):
                guard context.channel.isActive else {
                    destination.abort()
                    return
                }
                context.writeAndFlush(NIOAny(ByteBuffer(string: "OK\n")), promise: nil)
                let leftover = handler.buffered.readableBytes > 0 ? handler.buffered : nil
                let relay = SocketRelay(destination: destination, request: request, services: handler.services, opened: opened,
                                        initialData: leftover, clientInputClosed: handler.inputClosed, logger: handler.logger)
                do {
                    try context.pipeline.syncOperations.addHandler(relay)
                    context.pipeline.syncOperations.removeHandler(handler, promise: nil)
                } catch {
                    destination.abort()
                    context.close(promise: nil)
                }
            case .failure(let error):
                let message = (error as? StreamOpenError)?.message ?? "\(error)"
                handler.reply(context, "ERR " + message.replacingOccurrences(of: "\n", with: " "))
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !self.handled { context.read() }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.inputClosed = true
            if !self.handled { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func reply(_ context: ChannelHandlerContext, _ text: String) {
        self.handled = true
        context.writeAndFlush(NIOAny(ByteBuffer(string: text + "\n"))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The client side, for `ssmgate proxy`: a blocking unix socket joined to stdin/stdout by two
/// threads with one fixed buffer each.
public enum DaemonSocketClient {
    /// Whether something accepts connections on `path`.
    public static func isAlive(path: String) -> Bool {
        guard let fd = self.connect(path: path) else { return false }
        close(fd)
        return true
    }

    static func connect(path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            return nil
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    public enum Outcome {
        /// No daemon listens there: the caller starts its own session.
        case noDaemon
        /// The daemon refused the stream; the message says why.
        case refused(String)
        /// The stream ran and ended.
        case finished
    }

    /// Asks the daemon for HOST:PORT and relays stdin/stdout until both directions are done.
    public static func run(path: String, host: String, port: Int) -> Outcome {
        guard FileManager.default.fileExists(atPath: path), let fd = self.connect(path: path) else { return .noDaemon }
        defer { close(fd) }
        let request = Array("CONNECT \(host) \(port)\n".utf8)
        guard request.withUnsafeBytes({ self.writeAll(fd, $0) }) else { return .noDaemon }
        // The answer line, read byte by byte so no stream byte is consumed with it.
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 4096 {
            let count = read(fd, &byte, 1)
            guard count == 1 else { return .refused("the daemon closed the connection without an answer") }
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        let answer = String(decoding: line, as: UTF8.self)
        guard answer == "OK" else { return .refused(answer.hasPrefix("ERR ") ? String(answer.dropFirst(4)) : answer) }
        let upstream = Thread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = read(0, &buffer, buffer.count)
                if count <= 0 { break }
                if !buffer.withUnsafeBytes({ self.writeAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }) { break }
            }
            shutdown(fd, Int32(SHUT_WR))
        }
        upstream.start()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { break }
            if !buffer.withUnsafeBytes({ self.writeAll(1, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }) { break }
        }
        return .finished
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let count = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if count < 0, errno == EINTR { continue }
            if count <= 0 { return false }
            offset += count
        }
        return true
    }
}
