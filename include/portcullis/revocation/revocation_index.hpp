#pragma once
// The in-memory revocation index: for each CA (identified by its public key, as OCSP does, so a
// re-issued CA certificate with the same key still matches), the revoked serials of its current
// CRL in a SerialSet: ~20.3 bytes per entry, lookups that touch a few cache lines and allocate
// nothing.
// The verify path finds the CA's entry by comparing the CA's subjectPublicKey bits, which
// OpenSSL has already decoded, with the ones held: no digest is computed per certificate, and
// the same works for intermediates that clients send (not in any truststore). The SHA-1 of the
// key (KeyHash) names CAs everywhere else (refresher, discovery, issuer rules).
// Thread-safety: immutable once built. Publish new generations through CrlChecker; readers never
// lock.

#include "portcullis/revocation/crl.hpp"
#include "portcullis/revocation/serial_set.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::revocation {

using KeyHash = std::array<std::uint8_t, 20>;

// SHA-1 of the certificate's subjectPublicKey bits. Costs 350–500 ns and an allocation through
// OpenSSL 3.0's EVP layer: keep it off the per-handshake path.
KeyHash key_hash_of(const X509* cert) noexcept;
// The certificate's subjectPublicKey bits, as OpenSSL decoded them (no copy).
std::string_view public_key_bits(const X509* cert) noexcept;

struct IssuerRevocations {
  KeyHash issuer_key{};
  std::string issuer_public_key;  // subjectPublicKey bits: what the verify path compares
  std::string issuer_subject;     // RFC 4514, for status and logs
  std::string source;             // where the CRL came from
  std::chrono::system_clock::time_point this_update;
  std::optional<std::chrono::system_clock::time_point> next_update;
  std::string crl_number;
  SerialSet revoked;
  std::vector<std::string> oversized_serials;  // magnitude octets of serials beyond 20 octets

  // Sets issuer_key and issuer_public_key from the CA's certificate.
  void set_issuer(const X509* ca);
  std::size_t entries() const noexcept { return revoked.size() + oversized_serials.size(); }
};

class RevocationIndex {
 public:
  enum class Result { not_covered, good, revoked };

  explicit RevocationIndex(std::vector<std::shared_ptr<const IssuerRevocations>> issuers);

  // The issuer's entry, or null when no CRL for it is held.
  const IssuerRevocations* issuer(const KeyHash& key) const noexcept;
  // The same from the issuing CA's certificate, without hashing its key: for the verify path.
  const IssuerRevocations* issuer(const X509* ca) const noexcept;
  Result lookup(const KeyHash& issuer_key, const Serial& serial) const noexcept;
  Result lookup(const X509* cert, const X509* issuer) const noexcept;
  // `cert` against one issuer's entry: good or revoked.
  static Result lookup(const IssuerRevocations& entry, const X509* cert) noexcept;

  const std::vector<std::shared_ptr<const IssuerRevocations>>& issuers() const noexcept {
    return issuers_;
  }
  std::size_t entries() const noexcept;

 private:
  // A short tag of an issuer's key bits, to pick the candidates whose bits are then compared.
  struct KeyTag {
    std::uint64_t tag;
    const IssuerRevocations* entry;
  };

  // Sorted by issuer_key. Entries are shared between generations: publishing a new CRL for one
  // issuer copies pointers, not the other issuers' serials.
  std::vector<std::shared_ptr<const IssuerRevocations>> issuers_;
  std::vector<KeyTag> by_key_bits_;  // sorted by tag
  bool all_have_key_bits_ = true;    // otherwise issuer(X509*) falls back to the key hash
};

}  // namespace portcullis::revocation
