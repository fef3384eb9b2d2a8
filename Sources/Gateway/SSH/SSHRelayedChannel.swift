import CLibSSH
import NIOCore
import Relay

/// One `direct-tcpip` channel on the session thread: moves client bytes from libssh into the
/// destination ring and destination bytes from the other ring into the channel, within the
/// client's window.
///
/// Backpressure toward the client: the data callback takes only what fits in the ring; libssh
/// keeps the rest and stops growing the channel window, so a fast client is held back by SSH flow
/// control. The rest is read later, once the event loop has drained the ring and woken the session.
final class SSHRelayedChannel {
    let channel: OpaquePointer
    let relay: SSHChannelRelay
    let request: StreamRequest
    let opened: NIODeadline
    private let core: SSHFrontCore
    private let callbacks: UnsafeMutablePointer<ssh_channel_callbacks_struct>
    /// Client bytes libssh still holds because the ring was full.
    private var leftover = 0
    private var clientEOF = false
    private var clientClosed = false
    private var destinationInputClosed = false
    private var bytesFromClient = 0
    private var bytesToClient = 0
    private var done = false

    init(channel: OpaquePointer, relay: SSHChannelRelay, request: StreamRequest, opened: NIODeadline, core: SSHFrontCore) {
        self.channel = channel
        self.relay = relay
        self.request = request
        self.opened = opened
        self.core = core
        self.callbacks = .allocate(capacity: 1)
        var callbacks = ssh_channel_callbacks_struct()
        callbacks.size = MemoryLayout<ssh_channel_callbacks_struct>.size
        // Unretained: the session's channel list owns this object, and the callbacks are removed
        // before it lets go (finish).
        callbacks.userdata = Unmanaged.passUnretained(self).toOpaque()
        callbacks.channel_data_function = { _, _, data, length, isStderr, userdata in
            let this = Unmanaged<SSHRelayedChannel>.fromOpaque(userdata!).takeUnretainedValue()
            return Int32(this.clientSent(UnsafeRawBufferPointer(start: data, count: Int(length)), isStderr: isStderr != 0))
        }
        callbacks.channel_eof_function = { _, _, userdata in
            Unmanaged<SSHRelayedChannel>.fromOpaque(userdata!).takeUnretainedValue().clientEOF = true
        }
        callbacks.channel_close_function = { _, _, userdata in
            Unmanaged<SSHRelayedChannel>.fromOpaque(userdata!).takeUnretainedValue().clientClosed = true
        }
        self.callbacks.initialize(to: callbacks)
        ssh_set_channel_callbacks(channel, self.callbacks)
    }

    deinit {
        self.callbacks.deinitialize(count: 1)
        self.callbacks.deallocate()
    }

    /// libssh offers everything it holds for this channel; returns how much was taken.
    private func clientSent(_ bytes: UnsafeRawBufferPointer, isStderr: Bool) -> Int {
        guard !isStderr, bytes.count > 0 else { return bytes.count }
        guard let taken = self.relay.toDestination.write(bytes) else {
            self.leftover = 0
            return bytes.count  // the destination is gone: discard
        }
        if taken > 0 {
            self.bytesFromClient += taken
            self.relay.wakeEventLoop()
        }
        self.leftover = bytes.count - taken
        return taken
    }

    /// Moves what can move now; true when the channel is over (and released).
    func service(scratch: UnsafeMutableRawBufferPointer) -> Bool {
        guard !self.done else { return true }
        if self.clientClosed {
            self.finish(outcome: "client_closed")
            return true
        }
        self.drainLeftover(scratch: scratch)
        if self.clientEOF, self.leftover == 0, !self.destinationInputClosed {
            self.destinationInputClosed = true
            self.relay.toDestination.closeForWriting()
            self.relay.wakeEventLoop()
        }
        var window = Int(ssh_channel_window_size(self.channel))
        var moved = false
        while window > 0 {
            let count = self.relay.toClient.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch.prefix(min(window, scratch.count))))
            if count == 0 { break }
            let written = ssh_channel_write(self.channel, scratch.baseAddress, UInt32(count))
            if written < 0 {
                self.finish(outcome: "client_error")
                return true
            }
            self.bytesToClient += Int(written)
            window -= count
            moved = true
        }
        if moved { self.relay.wakeEventLoop() }
        if self.relay.toClient.isDrained {
            // The destination closed and everything it sent has reached the channel.
            ssh_channel_send_eof(self.channel)
            ssh_channel_close(self.channel)
            self.finish(outcome: self.relay.destinationErrorText.map { "destination_error: \($0)" } ?? "ok")
            return true
        }
        return false
    }

    private func drainLeftover(scratch: UnsafeMutableRawBufferPointer) {
        while self.leftover > 0 {
            let closed = self.relay.toDestination.isClosedForReading
            let room = closed ? scratch.count : self.relay.toDestination.writableBytes
            guard room > 0 else { return }  // the event loop wakes us when it has read
            let want = min(self.leftover, scratch.count, room)
            let count = ssh_channel_read_nonblocking(self.channel, scratch.baseAddress, UInt32(want), 0)
            guard count > 0 else {
                self.leftover = 0
                return
            }
            if let taken = self.relay.toDestination.write(UnsafeRawBufferPointer(rebasing: scratch.prefix(Int(count)))), taken > 0 {
                self.bytesFromClient += taken
                self.relay.wakeEventLoop()
            }
            self.leftover = max(0, self.leftover - Int(count))
        }
    }

    /// Ends the channel: callbacks off, destination released, the record written, libssh's
    /// channel freed (which sends CLOSE if we have not yet).
    func finish(outcome: String) {
        guard !self.done else { return }
        self.done = true
        ssh_remove_channel_callbacks(self.channel, self.callbacks)
        self.relay.release()
        self.core.services.streamFinished(StreamRecord(
            request: self.request, route: self.relay.route, bytesFromClient: self.bytesFromClient,
            bytesToClient: self.bytesToClient, opened: self.opened, closed: .now(), outcome: outcome))
        ssh_channel_free(self.channel)
        self.core.openChannels.subtract(1, ordering: .relaxed)
    }
}

@available(*, unavailable)
extension SSHRelayedChannel: Sendable {}

/// A `session` channel (plain `ssh gw`): after a shell or exec request it shows the help text,
/// exits 0 and closes.
final class SSHHelpChannel {
    let channel: OpaquePointer
    var text: [UInt8]?
    private var offset = 0

    init(channel: OpaquePointer) {
        self.channel = channel
    }

    /// True when the channel is over (freed).
    func service() -> Bool {
        if ssh_channel_is_closed(self.channel) != 0 {
            ssh_channel_free(self.channel)
            return true
        }
        guard let text = self.text else { return false }
        let window = Int(ssh_channel_window_size(self.channel))
        let count = min(window, text.count - self.offset)
        if count > 0 {
            let written = text.withUnsafeBytes { ssh_channel_write(self.channel, $0.baseAddress! + self.offset, UInt32(count)) }
            guard written >= 0 else {
                ssh_channel_free(self.channel)
                return true
            }
            self.offset += count
        }
        guard self.offset == text.count else { return false }
        ssh_channel_request_send_exit_status(self.channel, 0)
        ssh_channel_send_eof(self.channel)
        ssh_channel_close(self.channel)
        ssh_channel_free(self.channel)
        return true
    }
}

@available(*, unavailable)
extension SSHHelpChannel: Sendable {}
