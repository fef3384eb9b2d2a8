// The libssh server API for the gateway's SSH front (Debian: libssh-dev, found through pkg-config).
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <libssh/callbacks.h>
