import CLibSSH

#if canImport(Glibc)
import Glibc
#endif

/// The front's host keys: Ed25519, ECDSA P-256 and RSA 3072, so every client finds one it prefers.
/// Generated on first start and reused, so `known_hosts` entries stay valid across restarts.
enum SSHHostKeys {
    static let kinds: [(file: String, type: ssh_keytypes_e, bits: Int32)] = [
        ("ssh_host_ed25519_key", SSH_KEYTYPE_ED25519, 0),
        ("ssh_host_ecdsa_key", SSH_KEYTYPE_ECDSA_P256, 256),
        ("ssh_host_rsa_key", SSH_KEYTYPE_RSA, 3072),
    ]

    /// Loads each key from `directory`, creating the directory (0700) and missing keys (0600).
    /// The caller owns the returned keys.
    static func loadOrCreate(in directory: String) throws -> [OpaquePointer] {
        // Parents first (~/.ssmgate on a first run), each private to the user.
        var prefix = ""
        for component in directory.split(separator: "/", omittingEmptySubsequences: true).dropLast() {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { break }
        }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SSHFrontError("cannot create the host key directory \(directory): \(String(cString: strerror(errno)))")
        }
        var keys: [OpaquePointer] = []
        do {
            for kind in self.kinds {
                keys.append(try self.loadOrCreate(path: "\(directory)/\(kind.file)", type: kind.type, bits: kind.bits))
            }
        } catch {
            for key in keys { ssh_key_free(key) }
            throw error
        }
        return keys
    }

    private static func loadOrCreate(path: String, type: ssh_keytypes_e, bits: Int32) throws -> OpaquePointer {
        if access(path, F_OK) == 0 {
            var key: OpaquePointer?
            guard ssh_pki_import_privkey_file(path, nil, nil, nil, &key) == SSH_OK, let key else {
                throw SSHFrontError("cannot read the host key \(path): it is not an unencrypted OpenSSH private key; move it away to have a new one generated")
            }
            return key
        }
        var key: OpaquePointer?
        guard ssh_pki_generate(type, bits, &key) == SSH_OK, let key else {
            throw SSHFrontError("cannot generate the host key \(path)")
        }
        var text: UnsafeMutablePointer<CChar>?
        guard ssh_pki_export_privkey_base64(key, nil, nil, nil, &text) == SSH_OK, let text else {
            ssh_key_free(key)
            throw SSHFrontError("cannot encode the new host key \(path)")
        }
        defer { ssh_string_free_char(text) }
        // Created 0600 from the start: the private key is never readable by others, even briefly.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            ssh_key_free(key)
            throw SSHFrontError("cannot create the host key \(path): \(String(cString: strerror(errno)))")
        }
        let length = strlen(text)
        var written = 0
        while written < length {
            let n = write(fd, text + written, length - written)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            written += n
        }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == length, synced else {
            unlink(path)
            ssh_key_free(key)
            throw SSHFrontError("cannot write the host key \(path)")
        }
        return key
    }
}
