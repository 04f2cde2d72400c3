#pragma once
// Builds the SSL_CTX of a TLS listener: server certificate and key, protocol limits, ciphers and
// groups, ALPN, and client certificate verification with the revocation hook.
// Thread-safety: build once; the resulting SSL_CTX is shared read-only by every io thread.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/checker.hpp"
#include "portcullis/tls/openssl.hpp"
#include "portcullis/tls/truststore.hpp"

#include <memory>
#include <string>
#include <string_view>

namespace portcullis::tls {

struct ServerContextOptions {
  const config::Listener* listener = nullptr;
  std::shared_ptr<const Truststore> truststore;
  std::shared_ptr<const revocation::Checker> revocation;  // null = revocation off
  std::string session_id_context;  // binds sessions to the trust and policy configuration
};

// Throws TlsError with a message naming the file or key that is wrong.
SslCtxPtr build_server_context(const ServerContextOptions& options);

// Why client verification failed on this connection: "no_certificate", "unknown_ca", "expired",
// "not_yet_valid", "bad_purpose", "chain_too_long", "revoked", "revocation_unknown",
// "bad_certificate"; empty when it did not fail.
std::string_view verify_failure_reason(const SSL* ssl);

}  // namespace portcullis::tls
