#pragma once
// Builds the SSL_CTX of a TLS listener: server certificate and key, protocol limits, ciphers and
// groups, ALPN, and client certificate verification with the revocation hook.
// Thread-safety: build once; the resulting SSL_CTX is shared read-only by every io thread.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/checker.hpp"
#include "portcullis/tls/openssl.hpp"
#include "portcullis/tls/truststore.hpp"

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace portcullis::tls {

struct ServerContextOptions {
  const config::Listener* listener = nullptr;  // must outlive the call only
  std::shared_ptr<const Truststore> truststore;
  std::shared_ptr<const revocation::Checker> revocation;  // null = revocation off
  // Binds sessions to the trust and policy configuration; any length (it is hashed to 32 bytes).
  std::string session_id_context;
  // How messages name the listener, e.g. "listeners[0]"; empty = "listener '<name>'".
  std::string config_key;
};

// Throws TlsError with a message naming the file or key that is wrong, e.g.
// "listeners[0].tls.groups: group 'X25519MLKEM768' is not available in OpenSSL 3.0.22 (...)".
// Client certificates are required (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT), verified
// against the truststore with the TLS client purpose and max_chain_depth, then passed to the
// revocation Checker (leaf, or the whole chain below the anchor). Chains that verified are
// remembered (VerifiedChains, client_auth.chain_cache_size), so a client seen before skips the
// chain's signatures; the revocation check still runs for every handshake. The SSL_CTX keeps the
// truststore and the Checker alive; it owns its verify and info callbacks (do not replace them).
SslCtxPtr build_server_context(const ServerContextOptions& options);

// The DER OCSP response to staple now, or null for none. Called during handshakes: it must not
// block or do I/O.
using StapleSource = std::function<std::shared_ptr<const std::string>()>;

// Answers clients that ask for certificate status (status_request) with what `source` returns,
// and with no status when it returns null. The SSL_CTX keeps `source` alive. Call before the
// context is shared with io threads.
void enable_ocsp_stapling(SSL_CTX* ctx, StapleSource source);

// The listener's cache of verified client chains (client_auth.chain_cache_size): the chains it
// holds, and its lookups since the context was built. None when the cache is off.
struct ChainCacheStats {
  std::size_t chains = 0;
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  bool operator==(const ChainCacheStats&) const = default;
};
std::optional<ChainCacheStats> chain_cache_stats(const SSL_CTX* ctx);

// Removes the sessions whose tls.session_lifetime has passed from the context's session cache;
// returns how many. OpenSSL's own clean-up, every 255 full handshakes, is off: in OpenSSL 3.0
// it walks the whole cache each time (0.6 % of a full handshake's CPU with a full cache of
// 20,480). The cache stays bounded by tls.session_cache_size either way, an expired session is
// never resumed, and the gateway calls this every 30 seconds.
std::size_t remove_expired_sessions(SSL_CTX* ctx);

// The revocation generation (Checker::generation()) this connection's chain was checked
// against in its handshake: by the verify callback in a full handshake, or, for a resumed
// session, from the session's stamp (in its ticket, or with it in the session cache) when the
// checker says nothing has changed since (or by a check as the new ticket was made). 0 when no
// such check is known: a resumed session must then be checked. Stamps are only made for
// checkers that do not defer (no OCSP).
std::uint64_t revocation_checked_generation(const SSL* ssl);

// Whether this resumed session's stamp held, so that its chain was not checked again.
bool resumed_under_stamp(const SSL* ssl);

// Why client verification failed on this connection: "no_certificate", "unknown_ca", "expired",
// "not_yet_valid", "bad_purpose", "chain_too_long", "revoked", "revocation_unknown",
// "bad_certificate"; empty when it did not fail.
std::string_view verify_failure_reason(const SSL* ssl);

}  // namespace portcullis::tls
