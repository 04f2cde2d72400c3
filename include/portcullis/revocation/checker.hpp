#pragma once
// The hook the TLS verify path calls for each certificate whose revocation status matters.
// Thread-safety: check() is called concurrently from every io thread; it must not block, do
// network I/O, or take locks that a writer can hold for long.

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <string_view>
#include <utility>
#include <vector>

namespace portcullis::revocation {

// pending: no answer is at hand yet (an OCSP status not cached). The handshake goes on; the
// connection has it resolved (Checker::resolve) before anything is forwarded.
enum class Status { good, revoked, unknown, pending };

struct Verdict {
  Status status = Status::good;
  // Short, stable, loggable: "crl_expired", "no_crl_for_issuer", ... Points at static text, so
  // a verdict costs no allocation on the handshake path.
  std::string_view reason;
};

// A certificate and the one that issued it in the verified chain.
using CertPair = std::pair<X509*, X509*>;

class Checker {
 public:
  virtual ~Checker() = default;
  // `issuer` is the certificate that issued `cert` in the verified chain.
  virtual Verdict check(X509* cert, X509* issuer) const noexcept = 0;
  // Whether check() may answer pending.
  virtual bool may_defer() const noexcept { return false; }
  // The answer once resolve() is done: never pending (what could not be resolved goes to the
  // fallback or the policy).
  virtual Verdict check_settled(X509* cert, X509* issuer) const noexcept {
    return check(cert, issuer);
  }
  // Looks up what check() left pending, off the io threads. `done` runs once, on another
  // thread, when every pair has an answer or has failed; bounded by the query timeout.
  virtual void resolve(const std::vector<CertPair>& pending, std::function<void()> done) const {
    (void)pending;
    done();
  }
  // Whether CA certificates in the chain are checked too, or only the leaf.
  virtual bool check_whole_chain() const noexcept { return false; }
  // Changes whenever the revocation data changes, so long-lived connections know to re-check.
  virtual std::uint64_t generation() const noexcept { return 0; }
  // Whether a chain found good at `checked_at` against the data of `generation` is still good
  // now without looking again: the data has not changed, and nothing the verdict depends on has
  // changed with time alone (a CRL going stale). False when that cannot be told; a resumed
  // session is then checked again.
  virtual bool unchanged_since(std::uint64_t generation,
                               std::chrono::system_clock::time_point checked_at) const noexcept {
    (void)generation;
    (void)checked_at;
    return false;
  }
};

// Checks a connection's peer chain against `checker`: the verified chain of a full handshake,
// or, for a resumed session (which carries no verified chain), the chain rebuilt against
// `trust`. Used after resumption and whenever the revocation data changes under a live
// connection.
// With `pending`, certificates check() leaves pending are collected there and the result is
// pending when nothing was worse; without it, every certificate gets check_settled().
// With `not_after`, the earliest notAfter of the chain is stored there.
Verdict check_peer(const Checker& checker, SSL* ssl, X509_STORE* trust,
                   std::vector<CertPair>* pending = nullptr, std::time_t* not_after = nullptr);

// The earliest notAfter of the certificates in `chain`; 0 when there is none or one cannot be
// read.
std::time_t earliest_not_after(STACK_OF(X509) * chain) noexcept;

}  // namespace portcullis::revocation
