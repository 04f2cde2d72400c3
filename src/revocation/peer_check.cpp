#include "portcullis/revocation/checker.hpp"
#include "portcullis/tls/openssl.hpp"

namespace portcullis::revocation {

Verdict check_peer(const Checker& checker, SSL* ssl, X509_STORE* trust,
                   std::vector<CertPair>* pending) {
  X509* leaf = SSL_get0_peer_certificate(ssl);
  if (!leaf) return Verdict{Status::unknown, "no_certificate"};
  STACK_OF(X509)* chain = SSL_get0_verified_chain(ssl);
  tls::X509StoreCtxPtr ctx;
  if (!chain || sk_X509_num(chain) < 2) {
    // A resumed session keeps the peer certificate but not the verified chain: rebuild it.
    ctx.reset(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), trust, leaf, SSL_get_peer_cert_chain(ssl)) != 1) {
      return Verdict{Status::unknown, "chain_unavailable"};
    }
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(ctx.get()) != 1) return Verdict{Status::unknown, "chain_unavailable"};
    chain = X509_STORE_CTX_get0_chain(ctx.get());
  }
  const int n = sk_X509_num(chain);
  const int last = checker.check_whole_chain() ? n - 1 : 1;  // the anchor is never checked
  Verdict deferred{Status::good, ""};
  for (int depth = 0; depth < last && depth + 1 < n; ++depth) {
    X509* cert = sk_X509_value(chain, depth);
    X509* issuer = sk_X509_value(chain, depth + 1);
    auto verdict = pending ? checker.check(cert, issuer) : checker.check_settled(cert, issuer);
    if (verdict.status == Status::pending) {
      pending->emplace_back(cert, issuer);
      deferred = verdict;
    } else if (verdict.status != Status::good) {
      return verdict;
    }
  }
  return deferred;
}

}  // namespace portcullis::revocation
