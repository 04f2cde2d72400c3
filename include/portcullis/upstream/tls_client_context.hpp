#pragma once
// The TLS client side of connections to one upstream, built from its `tls` settings once per
// configuration generation: the CAs its certificate must chain to, the name it must carry, and
// the certificate the gateway presents, if any.
// Thread-safety: immutable after build; connections on every io thread share it.

#include "portcullis/config/config.hpp"

#include <boost/asio/ssl/context.hpp>

#include <memory>
#include <string>

namespace portcullis::upstream {

struct TlsClientContext {
  // Mutable because Asio takes a non-const context for each new stream; OpenSSL's SSL_new only
  // takes a reference on it, which is thread-safe.
  mutable boost::asio::ssl::context ssl{boost::asio::ssl::context::tls_client};
  std::string server_name;  // empty = each endpoint's host
};

// Throws std::runtime_error naming the setting and file that could not be loaded.
std::unique_ptr<TlsClientContext> build_tls_client_context(const config::UpstreamTls& tls);

}  // namespace portcullis::upstream
