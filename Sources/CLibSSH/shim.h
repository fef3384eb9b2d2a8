// The libssh server API for the gateway's SSH front (Debian: libssh-dev, found through pkg-config).
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <libssh/callbacks.h>

#include <stdint.h>
#include <string.h>

// libssh 0.10 has no public call that refuses a channel open with a reason code and a
// description: ssh_message_reply_default() always sends "administratively prohibited" with an
// empty description, so `ssh -J` users would never see why the gateway refused. The helpers
// below reach the two private fields this needs (the client's channel number in the message and
// the session's output buffer) through mirrors of the heads of `struct ssh_message_struct`
// (include/libssh/messages.h) and `struct ssh_session_struct` (include/libssh/session.h) of
// libssh 0.10.x. Each access is checked first against values the public API returns for the
// same object (banners, destination strings and port), so a different layout makes the helper
// decline (return -1) and the caller falls back to the default reply instead of misbehaving.

struct ssmgate_libssh010_session_head {
    struct {
        struct { int error_code; char error_buffer[1024]; } error;
        void *callbacks;
        int log_verbosity;
    } common;
    void *socket;
    char *serverbanner;
    char *clientbanner;
    int protoversion;
    int server;
    int client;
    int openssh;
    uint32_t send_seq;
    uint32_t recv_seq;
    struct { long seconds; long useconds; } last_rekey_time;
    int connected;
    int alive;
    int flags;
    uint32_t extensions;
    void *banner;
    char *peer_discon_msg;
    char *disconnect_message;
    ssh_buffer in_buffer;
    struct { int valid; uint32_t len; uint8_t type; } in_packet;
    ssh_buffer out_buffer;
};

struct ssmgate_libssh010_message_head {
    ssh_session session;
    int type;
    struct {
        char *username;
        int method;
        char *password;
        void *pubkey;
        char *sigtype;
        int signature_state;
        char kbdint_response;
    } auth_request;
    struct {
        int type;
        uint32_t sender;
        uint32_t window;
        uint32_t packet_size;
        char *originator;
        uint16_t originator_port;
        char *destination;
        uint16_t destination_port;
    } channel_request_open;
};

/// The session's output buffer, or NULL when the mirrored layout does not match this libssh.
/// `disconnect_message` must be the string last given to ssh_session_set_disconnect_message().
static inline ssh_buffer ssmgate_session_out_buffer(ssh_session session, const char *disconnect_message) {
    struct ssmgate_libssh010_session_head *head = (struct ssmgate_libssh010_session_head *)session;
    if (session == NULL || disconnect_message == NULL) return NULL;
    if (head->serverbanner != ssh_get_serverbanner(session) || head->serverbanner == NULL) return NULL;
    if (head->clientbanner != ssh_get_clientbanner(session) || head->clientbanner == NULL) return NULL;
    if (head->disconnect_message == NULL || strcmp(head->disconnect_message, disconnect_message) != 0) return NULL;
    if (head->in_buffer == NULL || head->out_buffer == NULL || head->in_buffer == head->out_buffer) return NULL;
    return head->out_buffer;
}

static inline void ssmgate_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/// Refuses the channel open `msg` with RFC 4254 § 5.1 SSH_MSG_CHANNEL_OPEN_FAILURE, `reason`
/// and `description`; returns 0 when sent, -1 when the caller must fall back to
/// ssh_message_reply_default(). The caller still frees `msg`.
///
/// The payload is placed in the session's (empty) output buffer and sent by ssh_send_ignore(),
/// which appends its own 5 bytes (SSH_MSG_IGNORE and an empty string) and sends the buffer as
/// one packet; the failure's last field, the language tag, is declared 5 bytes long so that
/// those bytes become the (ignored) language tag and the packet stays well-formed.
static inline int ssmgate_reply_open_failure(ssh_session session, ssh_message msg, const char *disconnect_message,
                                             uint32_t reason, const char *description) {
    struct ssmgate_libssh010_message_head *m = (struct ssmgate_libssh010_message_head *)msg;
    if (msg == NULL || m->session != session) return -1;
    if (ssh_message_type(msg) != SSH_REQUEST_CHANNEL_OPEN) return -1;
    if (m->channel_request_open.type != ssh_message_subtype(msg)) return -1;
    if (m->channel_request_open.destination != ssh_message_channel_request_open_destination(msg)) return -1;
    if (m->channel_request_open.originator != ssh_message_channel_request_open_originator(msg)) return -1;
    if ((int)m->channel_request_open.destination_port != ssh_message_channel_request_open_destination_port(msg)) return -1;
    ssh_buffer out = ssmgate_session_out_buffer(session, disconnect_message);
    if (out == NULL || ssh_buffer_get_len(out) != 0) return -1;

    size_t length = strlen(description);
    if (length > 1024) length = 1024;
    uint8_t packet[1 + 4 + 4 + 4 + 1024 + 4];
    size_t n = 0;
    packet[n++] = 92; // SSH_MSG_CHANNEL_OPEN_FAILURE
    ssmgate_put_u32(packet + n, m->channel_request_open.sender); n += 4;
    ssmgate_put_u32(packet + n, reason); n += 4;
    ssmgate_put_u32(packet + n, (uint32_t)length); n += 4;
    memcpy(packet + n, description, length); n += length;
    ssmgate_put_u32(packet + n, 5); n += 4; // language tag: the 5 bytes ssh_send_ignore("") appends
    if (ssh_buffer_add_data(out, packet, (uint32_t)n) != 0) {
        ssh_buffer_reinit(out);
        return -1;
    }
    ssh_send_ignore(session, "");
    // ssh_send_ignore sends nothing when the socket is already closed: never leave our bytes behind.
    ssh_buffer now = ssmgate_session_out_buffer(session, disconnect_message);
    if (now != NULL && ssh_buffer_get_len(now) != 0) ssh_buffer_reinit(now);
    return 0;
}

// The queued-message server mode the front uses (it keeps a channel-open message alive until the
// destination answers) reads the offered key and its signature state from the message; libssh
// 0.10 marks these accessors deprecated in favour of callbacks that free the message on return.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static inline ssh_key ssmgate_message_auth_pubkey(ssh_message msg) { return ssh_message_auth_pubkey(msg); }
static inline int ssmgate_message_auth_publickey_state(ssh_message msg) {
    return (int)ssh_message_auth_publickey_state(msg);
}
#pragma GCC diagnostic pop
#pragma clang diagnostic pop
