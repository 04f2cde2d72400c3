#include "portcullis/tls/server_context.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

#include <fmt/format.h>

#include <cstring>
#include <sstream>

namespace portcullis::tls {

namespace {

// What the verify callback needs, kept alive by the SSL_CTX that points at it.
struct VerifyState {
  std::shared_ptr<const Truststore> truststore;
  std::shared_ptr<const revocation::Checker> revocation;
};

int ctx_state_index() {
  static const int index = SSL_CTX_get_ex_new_index(
      0, nullptr, nullptr, nullptr, [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
        delete static_cast<VerifyState*>(ptr);
      });
  return index;
}

// The first verification failure on a connection, as a static reason string.
int ssl_reason_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

const char* reason_for(int x509_error) {
  switch (x509_error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CRL_HAS_EXPIRED:
      return "expired";
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return "not_yet_valid";
    case X509_V_ERR_INVALID_PURPOSE:
    case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
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
      return "unknown_ca";
    default:
      return "bad_certificate";
  }
}

void record(SSL* ssl, const char* reason) {
  if (ssl && !SSL_get_ex_data(ssl, ssl_reason_index())) {
    SSL_set_ex_data(ssl, ssl_reason_index(), const_cast<char*>(reason));
  }
}

// OpenSSL has already checked the chain, dates, depth and purpose when it calls this with
// preverify_ok; what it adds is the failure reason for logs and metrics, and the revocation hook.
int verify_callback(int preverify_ok, X509_STORE_CTX* store_ctx) {
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (!preverify_ok) {
    record(ssl, reason_for(X509_STORE_CTX_get_error(store_ctx)));
    return 0;
  }
  const auto* state =
      static_cast<const VerifyState*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_state_index()));
  if (!state || !state->revocation) return 1;

  // The revocation hook: a lookup in the in-memory index, never network I/O.
  const int depth = X509_STORE_CTX_get_error_depth(store_ctx);
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(store_ctx);
  const int chain_length = sk_X509_num(chain);
  const bool is_anchor = depth == chain_length - 1;
  if (is_anchor || (depth > 0 && !state->revocation->check_whole_chain())) return 1;
  X509* cert = X509_STORE_CTX_get_current_cert(store_ctx);
  X509* issuer = sk_X509_value(chain, depth + 1);
  const auto verdict = state->revocation->check(cert, issuer);
  if (verdict.status == revocation::Status::revoked) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_CERT_REVOKED);
    record(ssl, "revoked");
    return 0;
  }
  if (verdict.status == revocation::Status::unknown) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_UNABLE_TO_GET_CRL);
    record(ssl, "revocation_unknown");
    return 0;
  }
  return 1;
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
  // A client that offers only other protocols still gets HTTP/1.1 without ALPN.
  return SSL_TLSEXT_ERR_NOACK;
}

constexpr const char* default_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

void set_groups(SSL_CTX* ctx, const config::Listener& listener, const std::string& key) {
  const auto& groups = listener.tls.groups;
  if (groups.empty()) return;
  std::string list;
  for (const auto& group : groups) {
    // Checked one by one so that the error names the group the OpenSSL in use lacks.
    if (SSL_CTX_set1_groups_list(ctx, group.c_str()) != 1) {
      ERR_clear_error();
      throw TlsError(fmt::format(
          "{}.tls.groups: group '{}' is not available in {}{}", key, group, OPENSSL_VERSION_TEXT,
          group.find("MLKEM") != std::string::npos || group.find("Kyber") != std::string::npos
              ? " (post-quantum hybrid groups need OpenSSL 3.5 or later)"
              : ""));
    }
    list += (list.empty() ? "" : ":") + group;
  }
  if (SSL_CTX_set1_groups_list(ctx, list.c_str()) != 1) {
    throw_openssl_error(fmt::format("{}.tls.groups: cannot set '{}'", key, list));
  }
}

}  // namespace

std::string_view verify_failure_reason(const SSL* ssl) {
  if (!ssl) return {};
  if (const auto* reason = static_cast<const char*>(SSL_get_ex_data(ssl, ssl_reason_index()))) {
    return reason;
  }
  return {};
}

SslCtxPtr build_server_context(const ServerContextOptions& options) {
  const auto& listener = *options.listener;
  const auto key = fmt::format("listener '{}'", listener.name);
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) throw_openssl_error("cannot create a TLS context");

  const int min_version = listener.tls.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;
  SSL_CTX_set_min_proto_version(ctx.get(), min_version);
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_options(
      ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);

  if (SSL_CTX_use_certificate_chain_file(ctx.get(), listener.tls.certificate.c_str()) != 1) {
    throw_openssl_error(fmt::format("{}: tls.certificate {} is not a usable PEM certificate chain",
                                    key, listener.tls.certificate.string()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), listener.tls.private_key.c_str(), SSL_FILETYPE_PEM) !=
      1) {
    throw_openssl_error(fmt::format("{}: tls.private_key {} is not a usable PEM private key", key,
                                    listener.tls.private_key.string()));
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    throw_openssl_error(fmt::format("{}: tls.private_key {} does not match tls.certificate {}", key,
                                    listener.tls.private_key.string(),
                                    listener.tls.certificate.string()));
  }

  const auto& ciphers =
      listener.tls.ciphers.empty() ? std::string(default_tls12_ciphers) : listener.tls.ciphers;
  if (SSL_CTX_set_cipher_list(ctx.get(), ciphers.c_str()) != 1) {
    throw_openssl_error(fmt::format("{}: tls.ciphers '{}' selects no usable cipher", key, ciphers));
  }
  if (!listener.tls.ciphersuites.empty() &&
      SSL_CTX_set_ciphersuites(ctx.get(), listener.tls.ciphersuites.c_str()) != 1) {
    throw_openssl_error(
        fmt::format("{}: tls.ciphersuites '{}' is not valid", key, listener.tls.ciphersuites));
  }
  set_groups(ctx.get(), listener, key);
  SSL_CTX_set_alpn_select_cb(ctx.get(), select_alpn, nullptr);

  // Client certificates: always required, verified against the truststore only.
  if (!options.truststore)
    throw TlsError(key + ": no truststore: client authentication cannot be enforced");
  if (SSL_CTX_set1_verify_cert_store(ctx.get(), options.truststore->store()) != 1) {
    throw_openssl_error(key + ": cannot install the truststore");
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_callback);
  SSL_CTX_set_verify_depth(ctx.get(), listener.client_auth.max_chain_depth);
  SSL_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  if (listener.client_auth.send_ca_names) {
    STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
    for (X509* root : options.truststore->roots()) {
      sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(root)));
    }
    SSL_CTX_set_client_CA_list(ctx.get(), names);
  }
  SSL_CTX_set_ex_data(ctx.get(), ctx_state_index(),
                      new VerifyState{options.truststore, options.revocation});

  // Session ids may only resume under the same trust and policy configuration.
  unsigned char sid[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(options.session_id_context.data()),
         options.session_id_context.size(), sid);
  SSL_CTX_set_session_id_context(ctx.get(), sid, SSL_MAX_SID_CTX_LENGTH);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_SERVER);
  return ctx;
}

}  // namespace portcullis::tls
