#include "portcullis/tls/server_context.hpp"

#include "portcullis/tls/library_context.hpp"
#include "portcullis/tls/session_tickets.hpp"
#include "portcullis/tls/verified_chains.hpp"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <optional>

namespace portcullis::tls {

namespace {

// What the verify callback needs, owned by the SSL_CTX (freed with it through ex_data).
struct VerifyState {
  std::shared_ptr<const Truststore> truststore;
  std::shared_ptr<const revocation::Checker> revocation;
  // Random per SSL_CTX: a ticket's revocation stamp counts only in the context that made it.
  std::uint64_t context = 0;
  std::unique_ptr<VerifiedChains> chains;  // null: every chain is verified afresh
};

void free_verify_state(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<VerifyState*>(ptr);
}

int ctx_state_index() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_verify_state);
  return index;
}

int new_ssl_index() {
  return SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
}

// The first verification failure on a connection, as a pointer to a static string.
int ssl_reason_index() {
  static const int index = new_ssl_index();
  return index;
}

// The revocation generation this connection's chain was checked against (an integer stored as
// the pointer), and when (seconds since the epoch): set by the verify callback in a full
// handshake, and for a resumed session whose stamp still holds.
int ssl_generation_index() {
  static const int index = new_ssl_index();
  return index;
}
int ssl_checked_at_index() {
  static const int index = new_ssl_index();
  return index;
}

// Set (to any non-null value) when the verified chain cache put its shared certificates in the
// session.
int ssl_shared_index() {
  static const int index = new_ssl_index();
  return index;
}

// Set (to any non-null value) when a resumed session's stamp held.
int ssl_stamp_held_index() {
  static const int index = new_ssl_index();
  return index;
}

void set_checked(SSL* ssl, std::uint64_t generation, std::time_t checked_at) {
  SSL_set_ex_data(ssl, ssl_generation_index(),
                  reinterpret_cast<void*>(static_cast<std::uintptr_t>(generation)));
  SSL_set_ex_data(ssl, ssl_checked_at_index(),
                  reinterpret_cast<void*>(static_cast<std::uintptr_t>(checked_at)));
}

std::uint64_t checked_generation(const SSL* ssl) {
  return reinterpret_cast<std::uintptr_t>(SSL_get_ex_data(ssl, ssl_generation_index()));
}

const char* reason_for(int x509_error) {
  switch (x509_error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return "expired";
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return "not_yet_valid";
    case X509_V_ERR_INVALID_PURPOSE:
    case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE:
      return "bad_purpose";
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
      return "chain_too_long";
    case X509_V_ERR_CERT_REVOKED:
      return "revoked";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_REJECTED:
      return "unknown_ca";
    default:
      return "bad_certificate";
  }
}

void record_failure(SSL* ssl, const char* reason) {
  if (ssl && !SSL_get_ex_data(ssl, ssl_reason_index())) {
    SSL_set_ex_data(ssl, ssl_reason_index(), const_cast<char*>(reason));
  }
}

void stamp_session(SSL* ssl, const VerifyState& state, STACK_OF(X509) * chain);

// OpenSSL has already built the chain and checked signatures, dates, depth and purpose when it
// reports a certificate as good; this adds the failure reason for logs and metrics, and the
// revocation hook.
int verify_callback(int preverify_ok, X509_STORE_CTX* store_ctx) {
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (!preverify_ok) {
    record_failure(ssl, reason_for(X509_STORE_CTX_get_error(store_ctx)));
    return 0;
  }
  if (!ssl) return 1;
  const auto* state =
      static_cast<const VerifyState*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_state_index()));
  if (!state || !state->revocation) return 1;

  // The revocation hook. Called once per certificate, anchor first, leaf last. The Checker is
  // a lookup in an in-memory index (no I/O here); it applies the fail-open/fail-closed policy
  // itself and answers unknown only when that policy denies. The anchor is trusted by
  // configuration and never checked.
  const int depth = X509_STORE_CTX_get_error_depth(store_ctx);
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(store_ctx);
  const int chain_length = sk_X509_num(chain);
  if (depth + 1 >= chain_length) {
    // The anchor comes first: the generation is read before any certificate is looked up, so
    // data published meanwhile counts as newer than what the chain was checked against.
    set_checked(ssl, state->revocation->generation(), std::time(nullptr));
    return 1;
  }
  if (depth > 0 && !state->revocation->check_whole_chain()) return 1;
  X509* cert = sk_X509_value(chain, depth);
  X509* issuer = sk_X509_value(chain, depth + 1);
  const auto verdict = state->revocation->check(cert, issuer);
  switch (verdict.status) {
    case revocation::Status::good:
      if (depth == 0) stamp_session(ssl, *state, chain);
      return 1;
    case revocation::Status::pending:
      // Resolved by the connection after the handshake, before any request is forwarded.
      return 1;
    case revocation::Status::revoked:
      // The client receives the certificate_revoked alert.
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_CERT_REVOKED);
      record_failure(ssl, "revoked");
      return 0;
    case revocation::Status::unknown:
      // An error OpenSSL maps to the certificate_unknown alert.
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_OCSP_CERT_UNKNOWN);
      record_failure(ssl, "revocation_unknown");
      return 0;
  }
  return 0;
}

// Builds and verifies the client's chain (OpenSSL's X509_verify_cert, or the cache's copy of its
// result), calling verify_callback for each certificate either way.
// Nothing may be thrown through libssl: a failed allocation fails the handshake.
int verify_chain(X509_STORE_CTX* store_ctx, void* chains) {
  try {
    bool shared = false;
    const int verified = static_cast<VerifiedChains*>(chains)->verify(store_ctx, &shared);
    auto* ssl = static_cast<SSL*>(
        X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
    if (shared && ssl) SSL_set_ex_data(ssl, ssl_shared_index(), ssl);
    return verified;
  } catch (const std::exception&) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_OUT_OF_MEM);
    return 0;
  }
}

// Session tickets carry a revocation stamp, inside the encrypted ticket: which context issued
// it, the revocation generation the chain was checked against and when, and the earliest
// notAfter of the chain. A resumption whose stamp still holds (same context, a checker that
// says nothing changed since, no certificate expired) needs no second look at the chain;
// OpenSSL keeps only the leaf in a ticket, so that look means rebuilding and re-verifying the
// chain, the largest cost of a resumed handshake after the ticket itself.
struct RevocationStamp {
  std::uint64_t context = 0;
  std::uint64_t generation = 0;
  std::int64_t checked_at = 0;
  std::int64_t not_after = 0;
};
constexpr unsigned char stamp_version = 1;
constexpr std::size_t stamp_size = 1 + 4 * 8;

void put_u64(unsigned char* out, std::uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) out[i] = static_cast<unsigned char>(v);
}
std::uint64_t get_u64(const unsigned char* in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | in[i];
  return v;
}

std::optional<RevocationStamp> read_stamp(SSL_SESSION* session) {
  void* data = nullptr;
  size_t size = 0;
  if (!session || SSL_SESSION_get0_ticket_appdata(session, &data, &size) != 1 ||
      size != stamp_size) {
    return std::nullopt;
  }
  const auto* in = static_cast<const unsigned char*>(data);
  if (in[0] != stamp_version) return std::nullopt;
  return RevocationStamp{get_u64(in + 1), get_u64(in + 9),
                         static_cast<std::int64_t>(get_u64(in + 17)),
                         static_cast<std::int64_t>(get_u64(in + 25))};
}

void write_stamp(SSL_SESSION* session, const RevocationStamp& stamp) {
  unsigned char out[stamp_size];
  out[0] = stamp_version;
  put_u64(out + 1, stamp.context);
  put_u64(out + 9, stamp.generation);
  put_u64(out + 17, static_cast<std::uint64_t>(stamp.checked_at));
  put_u64(out + 25, static_cast<std::uint64_t>(stamp.not_after));
  SSL_SESSION_set1_ticket_appdata(session, out, sizeof(out));
}

const VerifyState* verify_state(const SSL* ssl) {
  return static_cast<const VerifyState*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_state_index()));
}

// Whether stamps apply: only to a checker whose verdicts are settled in the handshake.
const revocation::Checker* stamping_checker(const VerifyState* state) {
  if (!state || !state->revocation || state->revocation->may_defer()) return nullptr;
  return state->revocation.get();
}

// A full handshake's session gets its stamp as the verify callback passes the leaf: before the
// session is cached (a session id, or a TLS 1.3 ticket naming a cached session) or encrypted
// into a ticket, and while no other connection can see it.
void stamp_session(SSL* ssl, const VerifyState& state, STACK_OF(X509) * chain) {
  SSL_SESSION* session = SSL_get_session(ssl);
  if (!stamping_checker(&state) || !session || SSL_session_reused(ssl)) return;
  const RevocationStamp stamp{state.context, checked_generation(ssl),
                              static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(
                                  SSL_get_ex_data(ssl, ssl_checked_at_index()))),
                              static_cast<std::int64_t>(revocation::earliest_not_after(chain))};
  if (stamp.generation == 0 || stamp.not_after == 0) return;
  write_stamp(session, stamp);
}

// Whether a resumed session's stamp still holds: made in this context, no certificate of the
// chain expired, and a checker that says nothing changed since. When it holds, the connection
// counts as checked against the stamp's generation.
bool stamp_holds(SSL* ssl, SSL_SESSION* session) {
  const auto* state = verify_state(ssl);
  const auto* checker = stamping_checker(state);
  const auto stamp = checker ? read_stamp(session) : std::nullopt;
  if (!stamp || stamp->context != state->context || std::time(nullptr) >= stamp->not_after ||
      !checker->unchanged_since(stamp->generation,
                                std::chrono::system_clock::from_time_t(stamp->checked_at))) {
    return false;
  }
  set_checked(ssl, stamp->generation, static_cast<std::time_t>(stamp->checked_at));
  SSL_set_ex_data(ssl, ssl_stamp_held_index(), ssl);
  return true;
}

// Called as OpenSSL builds a ticket, after the handshake (TLS 1.3), or as it renews one. In a
// full handshake the session already carries its stamp (stamp_session). A resumed session's
// ticket was read before (stateless tickets: decrypt_ticket); one from the cache (a TLS 1.3
// ticket naming it) is read here, before its new ticket is made.
int generate_ticket(SSL* ssl, void*) {
  const auto* state = verify_state(ssl);
  const auto* checker = stamping_checker(state);
  SSL_SESSION* session = SSL_get_session(ssl);
  if (!checker || !session || !SSL_session_reused(ssl)) return 1;
  if (checked_generation(ssl) != 0 || stamp_holds(ssl, session)) {
    return 1;  // resumed under a stamp that holds: the new ticket keeps it
  }
  // Resumed under a stamp that no longer holds (new revocation data, another context): check
  // the chain now, so that this connection need not and the new ticket carries a fresh stamp.
  // A chain that is not good gets no stamp; the connection refuses it after the handshake.
  RevocationStamp stamp{state->context, checker->generation(), std::time(nullptr), 0};
  std::time_t not_after = 0;
  const auto verdict =
      revocation::check_peer(*checker, ssl, state->truststore->store(), nullptr, &not_after);
  if (verdict.status != revocation::Status::good || not_after == 0) return 1;
  stamp.not_after = not_after;
  set_checked(ssl, stamp.generation, static_cast<std::time_t>(stamp.checked_at));
  write_stamp(session, stamp);
  return 1;
}

// Called with each ticket a client offers, once decrypted.
SSL_TICKET_RETURN decrypt_ticket(SSL* ssl, SSL_SESSION* session, const unsigned char*, size_t,
                                 SSL_TICKET_STATUS status, void*) {
  switch (status) {
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW:
      break;
    case SSL_TICKET_EMPTY:
    case SSL_TICKET_NO_DECRYPT:
      return SSL_TICKET_RETURN_IGNORE_RENEW;  // OpenSSL's own answer: a full handshake
    default:
      return SSL_TICKET_RETURN_ABORT;
  }
  // A stamp that no longer holds (or none) gets the ticket renewed, even where OpenSSL would
  // not (a key file's current key; TLS 1.2): the chain is checked once as the new ticket is
  // made, and that ticket carries the fresh stamp for the resumptions after it.
  const bool held = stamp_holds(ssl, session);
  if (status == SSL_TICKET_SUCCESS && (held || !stamping_checker(verify_state(ssl)))) {
    return SSL_TICKET_RETURN_USE;
  }
  return SSL_TICKET_RETURN_USE_RENEW;
}

// The CA certificates a client sent that the chain was verified with from the truststore
// instead (its intermediate, when the truststore holds it too) are replaced, in the session, by
// the truststore's own objects: the session then holds no decoded copy of its own (about
// 4 KiB for each connection, and for each cached session). The certificates are identical
// (X509_cmp compares the whole encoding), so nothing that reads the chain sees a difference.
// Called once the client's Certificate message is processed and verified, and before the session
// is cached or encrypted into a ticket: no other connection can reach it yet. When the verified
// chain cache has put its shared objects in the session (truststore ones included), the
// verified chain may hold the copies they replaced: nothing to do.
void share_truststore_copies(SSL* ssl) {
  if (SSL_get_ex_data(ssl, ssl_shared_index())) return;
  STACK_OF(X509)* sent = SSL_get_peer_cert_chain(ssl);
  STACK_OF(X509)* verified = SSL_get0_verified_chain(ssl);
  if (!sent || !verified) return;
  for (int i = 0; i < sk_X509_num(sent); ++i) {
    X509* own = sk_X509_value(sent, i);
    for (int j = 1; j < sk_X509_num(verified); ++j) {
      X509* trusted = sk_X509_value(verified, j);
      if (trusted == own || X509_cmp(trusted, own) != 0) continue;
      if (X509_up_ref(trusted) != 1) return;
      sk_X509_set(sent, i, trusted);
      X509_free(own);
      break;
    }
  }
}

// A client that sends no certificate never reaches the verify callback: OpenSSL fails the
// handshake itself. The alert it sends is the one moment this can be told apart.
//
// A session resumed by its id (TLS 1.2) passes neither ticket callback: its stamp is read as the
// handshake ends.
void info_callback(const SSL* ssl, int where, int) {
  if ((where & SSL_CB_ACCEPT_LOOP) == SSL_CB_ACCEPT_LOOP) {
    // Entering CertificateVerify: the client's certificates are in and verified (both versions).
    if (SSL_get_state(ssl) == TLS_ST_SR_CERT_VRFY && !SSL_session_reused(const_cast<SSL*>(ssl))) {
      share_truststore_copies(const_cast<SSL*>(ssl));
    }
    return;
  }
  if ((where & SSL_CB_HANDSHAKE_DONE) == SSL_CB_HANDSHAKE_DONE) {
    auto* mutable_ssl = const_cast<SSL*>(ssl);
    if (SSL_session_reused(mutable_ssl) && checked_generation(ssl) == 0) {
      stamp_holds(mutable_ssl, SSL_get_session(ssl));
    }
    return;
  }
  if ((where & SSL_CB_WRITE_ALERT) != SSL_CB_WRITE_ALERT) return;
  const unsigned long error = ERR_peek_last_error();
  if (ERR_GET_LIB(error) == ERR_LIB_SSL &&
      ERR_GET_REASON(error) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    record_failure(const_cast<SSL*>(ssl), "no_certificate");
  }
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, http11, sizeof(http11), in, inlen) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  // A client offering only other protocols (h2) still talks HTTP/1.1, without ALPN.
  return SSL_TLSEXT_ERR_NOACK;
}

// TLS 1.2: forward secrecy and AEAD only, ECDSA before RSA, AES-GCM before ChaCha20.
constexpr const char* default_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

std::string openssl_version() {
  return OpenSSL_version(OPENSSL_FULL_VERSION_STRING);
}

bool is_post_quantum(std::string group) {
  std::transform(group.begin(), group.end(), group.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return group.find("MLKEM") != std::string::npos || group.find("KYBER") != std::string::npos;
}

void set_groups(SSL_CTX* ctx, const std::vector<std::string>& groups, const std::string& where) {
  if (groups.empty()) return;
  std::string list;
  for (const auto& group : groups) {
    // One at a time, so that the error names the group this OpenSSL lacks.
    if (group.empty() || group.find(':') != std::string::npos ||
        SSL_CTX_set1_groups_list(ctx, group.c_str()) != 1) {
      ERR_clear_error();
      throw TlsError(fmt::format(
          "{}tls.groups: group '{}' is not available in OpenSSL {} ({})", where, group,
          openssl_version(),
          is_post_quantum(group)
              ? "it needs OpenSSL 3.5 or a provider that offers it"
              : "groups this build knows include X25519, X448, P-256, P-384, P-521, ffdhe2048"));
    }
    list += (list.empty() ? "" : ":") + group;
  }
  if (SSL_CTX_set1_groups_list(ctx, list.c_str()) != 1) {
    throw_openssl_error(fmt::format("{}tls.groups: cannot use '{}'", where, list));
  }
}

void require_file(const std::filesystem::path& path, const std::string& key) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw TlsError(fmt::format("{}: file not found: {}", key, path.string()));
  }
}

int no_passphrase(char*, int, int, void*) {
  return -1;
}

void load_certificate_and_key(SSL_CTX* ctx, const config::ServerTls& tls,
                              const std::string& where) {
  const auto cert = tls.certificate.string();
  const auto key = tls.private_key.string();
  require_file(tls.certificate, where + "tls.certificate");
  require_file(tls.private_key, where + "tls.private_key");
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    throw_openssl_error(fmt::format(
        "{}tls.certificate: {} is not a PEM certificate chain (leaf first, then intermediates)",
        where, cert));
  }
  // Read through the default library context, whose providers decode private keys (the
  // handshake context has no decoders for them). An encrypted key fails rather than prompt.
  BioPtr key_file(BIO_new_file(key.c_str(), "r"));
  EvpPkeyPtr pkey(key_file ? PEM_read_bio_PrivateKey_ex(key_file.get(), nullptr, no_passphrase,
                                                        nullptr, nullptr, nullptr)
                           : nullptr);
  if (!pkey || SSL_CTX_use_PrivateKey(ctx, pkey.get()) != 1) {
    // OpenSSL also lands here when the key parses but belongs to another certificate.
    const unsigned long error = ERR_peek_last_error();
    if (ERR_GET_LIB(error) == ERR_LIB_X509 && ERR_GET_REASON(error) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      throw TlsError(fmt::format("{}tls.private_key: {} does not match the certificate in {}",
                                 where, key, cert));
    }
    throw_openssl_error(
        fmt::format("{}tls.private_key: {} is not an unencrypted PEM private key", where, key));
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    throw TlsError(fmt::format("{}tls.private_key: {} does not match the certificate in {}", where,
                               key, cert));
  }
}

void free_staple_source(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<StapleSource*>(ptr);
}

int staple_source_index() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_staple_source);
  return index;
}

// On the server OpenSSL calls this only when the client sent status_request.
int staple_status(SSL* ssl, void*) {
  const auto* source = static_cast<const StapleSource*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), staple_source_index()));
  const auto der = source && *source ? (*source)() : nullptr;
  if (!der || der->empty()) return SSL_TLSEXT_ERR_NOACK;
  auto* copy = static_cast<unsigned char*>(OPENSSL_malloc(der->size()));
  if (!copy) return SSL_TLSEXT_ERR_NOACK;
  std::memcpy(copy, der->data(), der->size());
  // OpenSSL owns (and frees) the copy from here on.
  if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, static_cast<long>(der->size())) != 1) {
    OPENSSL_free(copy);
    return SSL_TLSEXT_ERR_NOACK;
  }
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

void enable_ocsp_stapling(SSL_CTX* ctx, StapleSource source) {
  auto owned = std::make_unique<StapleSource>(std::move(source));
  std::unique_ptr<StapleSource> previous(
      static_cast<StapleSource*>(SSL_CTX_get_ex_data(ctx, staple_source_index())));
  if (SSL_CTX_set_ex_data(ctx, staple_source_index(), owned.get()) != 1) {
    previous.release();  // still attached
    throw_openssl_error("cannot attach the OCSP stapling source");
  }
  owned.release();  // owned by the SSL_CTX now
  if (SSL_CTX_set_tlsext_status_cb(ctx, staple_status) != 1) {
    throw_openssl_error("cannot install the OCSP stapling callback");
  }
}

std::optional<ChainCacheStats> chain_cache_stats(const SSL_CTX* ctx) {
  const auto* state =
      ctx ? static_cast<const VerifyState*>(SSL_CTX_get_ex_data(ctx, ctx_state_index())) : nullptr;
  if (!state || !state->chains) return std::nullopt;
  return ChainCacheStats{state->chains->size(), state->chains->hits(), state->chains->misses()};
}

std::size_t remove_expired_sessions(SSL_CTX* ctx) {
  if (!ctx) return 0;
  const long before = SSL_CTX_sess_number(ctx);
  SSL_CTX_flush_sessions(ctx, static_cast<long>(std::time(nullptr)));
  return static_cast<std::size_t>(std::max(0L, before - SSL_CTX_sess_number(ctx)));
}

std::uint64_t revocation_checked_generation(const SSL* ssl) {
  return ssl ? checked_generation(ssl) : 0;
}

bool resumed_under_stamp(const SSL* ssl) {
  return ssl && SSL_get_ex_data(ssl, ssl_stamp_held_index()) != nullptr;
}

std::string_view verify_failure_reason(const SSL* ssl) {
  if (!ssl) return {};
  if (const auto* reason = static_cast<const char*>(SSL_get_ex_data(ssl, ssl_reason_index()))) {
    return reason;
  }
  return {};
}

SslCtxPtr build_server_context(const ServerContextOptions& options) {
  if (!options.listener) throw TlsError("server TLS context: no listener configuration");
  const auto& listener = *options.listener;
  // Messages read "listeners[0].tls.groups: ..." or "listener 'public': tls.groups: ...".
  const auto where = options.config_key.empty() ? fmt::format("listener '{}': ", listener.name)
                                                : options.config_key + ".";

  SslCtxPtr ctx(SSL_CTX_new_ex(handshake_library_context(), nullptr, TLS_server_method()));
  if (!ctx) throw_openssl_error(where + "cannot create a TLS context");

  int min_version = 0;
  if (listener.tls.min_version == "1.2") {
    min_version = TLS1_2_VERSION;
  } else if (listener.tls.min_version == "1.3") {
    min_version = TLS1_3_VERSION;
  } else {
    throw TlsError(fmt::format("{}tls.min_version: '{}' is not supported (use \"1.2\" or \"1.3\")",
                               where, listener.tls.min_version));
  }
  if (SSL_CTX_set_min_proto_version(ctx.get(), min_version) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    throw_openssl_error(where + "tls.min_version: cannot set the protocol range");
  }
  SSL_CTX_set_options(
      ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);

  load_certificate_and_key(ctx.get(), listener.tls, where);

  const std::string ciphers =
      listener.tls.ciphers.empty() ? std::string(default_tls12_ciphers) : listener.tls.ciphers;
  if (SSL_CTX_set_cipher_list(ctx.get(), ciphers.c_str()) != 1) {
    throw_openssl_error(
        fmt::format("{}tls.ciphers: '{}' selects no usable cipher", where, ciphers));
  }
  if (!listener.tls.ciphersuites.empty() &&
      SSL_CTX_set_ciphersuites(ctx.get(), listener.tls.ciphersuites.c_str()) != 1) {
    throw_openssl_error(fmt::format("{}tls.ciphersuites: '{}' is not a valid TLS 1.3 suite list",
                                    where, listener.tls.ciphersuites));
  }
  set_groups(ctx.get(), listener.tls.groups, where);
  SSL_CTX_set_alpn_select_cb(ctx.get(), select_alpn, nullptr);

  // Client certificates: always required, verified against the truststore and nothing else.
  if (!options.truststore) {
    throw TlsError(where +
                   "client_auth.truststore: none loaded; client authentication cannot "
                   "be enforced");
  }
  if (listener.client_auth.max_chain_depth < 0) {
    throw TlsError(fmt::format("{}client_auth.max_chain_depth: {} is negative", where,
                               listener.client_auth.max_chain_depth));
  }
  if (SSL_CTX_set1_verify_cert_store(ctx.get(), options.truststore->store()) != 1) {
    throw_openssl_error(where + "client_auth.truststore: cannot install");
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_callback);
  SSL_CTX_set_verify_depth(ctx.get(), listener.client_auth.max_chain_depth);
  // The leaf must allow clientAuth when it has an EKU, and digitalSignature when it has a KU.
  if (SSL_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT) != 1) {
    throw_openssl_error(where + "cannot require the TLS client purpose");
  }
  SSL_CTX_set_info_callback(ctx.get(), info_callback);
  if (listener.client_auth.send_ca_names) {
    STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
    if (!names) throw_openssl_error(where + "cannot allocate the CA name list");
    for (X509* root : options.truststore->roots()) {
      X509_NAME* name = X509_NAME_dup(X509_get_subject_name(root));
      if (!name || sk_X509_NAME_push(names, name) == 0) {
        X509_NAME_free(name);
        sk_X509_NAME_pop_free(names, X509_NAME_free);
        throw_openssl_error(where + "cannot build the CA name list");
      }
    }
    SSL_CTX_set_client_CA_list(ctx.get(), names);  // takes ownership
  }
  auto state =
      std::make_unique<VerifyState>(VerifyState{options.truststore, options.revocation, 0, {}});
  if (listener.client_auth.chain_cache_size < 0) {
    throw TlsError(fmt::format("{}client_auth.chain_cache_size: {} is negative", where,
                               listener.client_auth.chain_cache_size));
  }
  if (listener.client_auth.chain_cache_size > 0) {
    state->chains = std::make_unique<VerifiedChains>(
        static_cast<std::size_t>(listener.client_auth.chain_cache_size));
    SSL_CTX_set_cert_verify_callback(ctx.get(), verify_chain, state->chains.get());
  }
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&state->context), sizeof(state->context)) != 1) {
    throw_openssl_error(where + "cannot draw a random context id");
  }
  if (SSL_CTX_set_ex_data(ctx.get(), ctx_state_index(), state.get()) != 1) {
    throw_openssl_error(where + "cannot attach the verification state");
  }
  state.release();  // owned by the SSL_CTX now

  // Sessions resume only under the trust and policy configuration they were established with.
  // The cache (server side) and tickets stay on.
  unsigned char sid_ctx[SHA256_DIGEST_LENGTH];
  static_assert(sizeof(sid_ctx) <= SSL_MAX_SID_CTX_LENGTH);
  SHA256(reinterpret_cast<const unsigned char*>(options.session_id_context.data()),
         options.session_id_context.size(), sid_ctx);
  if (SSL_CTX_set_session_id_context(ctx.get(), sid_ctx, sizeof(sid_ctx)) != 1) {
    throw_openssl_error(where + "cannot set the session id context");
  }
  // Two ways to resume. Stateless tickets carry the session, encrypted, to the client: any
  // replica with the same keys can resume it, and the gateway keeps nothing. Without tickets,
  // sessions stay in this context's cache: TLS 1.2 resumes by session id, and a TLS 1.3 ticket
  // only names the cached session. OpenSSL 3.0 builds a stateless ticket by encoding the
  // session, decoding it again (the client certificate's key included, through the provider
  // decoders) and encoding the copy, and decodes it once more on resumption; from the cache a
  // resumption takes a reference. Without shared keys nothing else can read the tickets, so the
  // cache is the default then.
  const bool stateless = listener.tls.stateless_tickets();
  const int cache_size = listener.tls.session_cache_size;
  if (cache_size < 0) {
    throw TlsError(fmt::format("{}tls.session_cache_size: {} is negative", where, cache_size));
  }
  // Expired sessions are removed by remove_expired_sessions, not every 255 handshakes.
  SSL_CTX_set_session_cache_mode(
      ctx.get(),
      cache_size > 0 ? SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR : SSL_SESS_CACHE_OFF);
  SSL_CTX_sess_set_cache_size(ctx.get(), cache_size);
  if (SSL_CTX_set_session_ticket_cb(ctx.get(), generate_ticket, decrypt_ticket, nullptr) != 1) {
    throw_openssl_error(where + "cannot install the session ticket callbacks");
  }
  // One TLS 1.3 ticket per handshake instead of OpenSSL's two: a client resumes with one; the
  // second only serves a parallel connection, and a stateless one costs a tenth of a full
  // handshake's CPU. None when there is nothing to resume from.
  if (SSL_CTX_set_num_tickets(ctx.get(), stateless || cache_size > 0 ? 1 : 0) != 1) {
    throw_openssl_error(where + "cannot set the number of session tickets");
  }
  const auto lifetime =
      std::chrono::duration_cast<std::chrono::seconds>(listener.tls.session_lifetime).count();
  SSL_CTX_set_timeout(ctx.get(), static_cast<long>(std::max<long long>(1, lifetime)));
  if (!stateless) {
    SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
  } else if (!listener.tls.session_ticket_keys.empty()) {
    // Replicas sharing this file resume each other's sessions; without it every process (and
    // every reload) has a random key of its own.
    try {
      use_ticket_keys(ctx.get(), TicketKeys::load(listener.tls.session_ticket_keys));
    } catch (const TlsError& e) {
      throw TlsError(fmt::format("{}tls.session_ticket_keys: {}", where, e.what()));
    }
  }
  return ctx;
}

}  // namespace portcullis::tls
