#pragma once
// The hook the TLS verify path calls for each certificate whose revocation status matters.
// Thread-safety: check() is called concurrently from every io thread; it must not block, do
// network I/O, or take locks that a writer can hold for long.

#include <openssl/x509.h>

#include <string>

namespace portcullis::revocation {

enum class Status { good, revoked, unknown };

struct Verdict {
  Status status = Status::good;
  std::string reason;  // short, stable, loggable: "crl_expired", "no_crl_for_issuer", ...
};

class Checker {
 public:
  virtual ~Checker() = default;
  // `issuer` is the certificate that issued `cert` in the verified chain.
  virtual Verdict check(X509* cert, X509* issuer) const noexcept = 0;
  // Whether CA certificates in the chain are checked too, or only the leaf.
  virtual bool check_whole_chain() const noexcept { return false; }
};

}  // namespace portcullis::revocation
