#pragma once
// The hook the TLS verify path calls for each certificate whose revocation status matters.
// Thread-safety: check() is called concurrently from every io thread; it must not block, do
// network I/O, or take locks that a writer can hold for long.

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstdint>

#include <string_view>

namespace portcullis::revocation {

enum class Status { good, revoked, unknown };

struct Verdict {
  Status status = Status::good;
  // Short, stable, loggable: "crl_expired", "no_crl_for_issuer", ... Points at static text, so
  // a verdict costs no allocation on the handshake path.
  std::string_view reason;
};

class Checker {
 public:
  virtual ~Checker() = default;
  // `issuer` is the certificate that issued `cert` in the verified chain.
  virtual Verdict check(X509* cert, X509* issuer) const noexcept = 0;
  // Whether CA certificates in the chain are checked too, or only the leaf.
  virtual bool check_whole_chain() const noexcept { return false; }
  // Changes whenever the revocation data changes, so long-lived connections know to re-check.
  virtual std::uint64_t generation() const noexcept { return 0; }
};

// Checks a connection's peer chain against `checker`: the verified chain of a full handshake,
// or, for a resumed session (which carries no verified chain), the chain rebuilt against
// `trust`. Used after resumption and whenever the revocation data changes under a live
// connection.
Verdict check_peer(const Checker& checker, SSL* ssl, X509_STORE* trust) noexcept;

}  // namespace portcullis::revocation
