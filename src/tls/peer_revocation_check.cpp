// The chain-level revocation check of revocation/checker.hpp. Built with the TLS module,
// whose verify and session ticket callbacks use it; the Checker itself is an interface.
#include "portcullis/revocation/checker.hpp"
#include "portcullis/tls/openssl.hpp"

namespace portcullis::revocation {

std::time_t earliest_not_after(STACK_OF(X509) * chain) noexcept {
  std::time_t earliest = 0;
  const int n = chain ? sk_X509_num(chain) : 0;
  for (int i = 0; i < n; ++i) {
    std::tm tm{};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(sk_X509_value(chain, i)), &tm) != 1) return 0;
    const std::time_t t = timegm(&tm);
    if (earliest == 0 || t < earliest) earliest = t;
  }
  return earliest;
}

Verdict check_peer(const Checker& checker, SSL* ssl, X509_STORE* trust,
                   std::vector<CertPair>* pending, std::time_t* not_after) {
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
  if (not_after) *not_after = earliest_not_after(chain);
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
