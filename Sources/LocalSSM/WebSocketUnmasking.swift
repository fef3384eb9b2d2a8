import NIOCore
import NIOWebSocket
import SSMProtocol

extension WebSocketFrame {
    /// `unmaskedData`, eight bytes per step: every byte a client sends through the service passes here.
    var payloadUnmasked: ByteBuffer {
        guard let key = self.maskKey else { return self.data }
        var data = self.data
        let mask = WebSocketMask(key[key.startIndex], key[key.startIndex + 1], key[key.startIndex + 2], key[key.startIndex + 3])
        data.applyWebSocketMask(mask, keyOffset: (self.extensionData?.readableBytes ?? 0) % 4)
        return data
    }
}
