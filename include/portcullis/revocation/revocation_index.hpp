#pragma once
// The in-memory revocation index: for each CA (identified by the SHA-1 of its public key, as
// OCSP does, so a re-issued CA certificate with the same key still matches), the revoked serials
// of its current CRL in a sorted array of fixed 20-byte keys: 20 bytes per entry, lookups by
// binary search without allocation.
// Thread-safety: immutable once built. Publish new generations through an atomic shared_ptr;
// readers never lock.

#include "portcullis/revocation/crl.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace portcullis::revocation {

using KeyHash = std::array<std::uint8_t, 20>;

// SHA-1 of the certificate's subjectPublicKey bits.
KeyHash key_hash_of(const X509* cert) noexcept;

struct IssuerRevocations {
  KeyHash issuer_key{};
  std::string issuer_subject;  // RFC 4514, for status and logs
  std::string source;          // where the CRL came from
  std::chrono::system_clock::time_point this_update;
  std::optional<std::chrono::system_clock::time_point> next_update;
  std::string crl_number;
  std::vector<Serial> revoked;                 // sorted, unique
  std::vector<std::string> oversized_serials;  // DER content of serials beyond 20 octets
};

class RevocationIndex {
 public:
  enum class Result { not_covered, good, revoked };

  explicit RevocationIndex(std::vector<std::shared_ptr<const IssuerRevocations>> issuers);

  // The issuer's entry, or null when no CRL for it is held.
  const IssuerRevocations* issuer(const KeyHash& key) const noexcept;
  Result lookup(const KeyHash& issuer_key, const Serial& serial) const noexcept;
  Result lookup(const X509* cert, const X509* issuer) const noexcept;
  // `cert` against one issuer's entry: good or revoked.
  static Result lookup(const IssuerRevocations& entry, const X509* cert) noexcept;

  const std::vector<std::shared_ptr<const IssuerRevocations>>& issuers() const noexcept {
    return issuers_;
  }
  std::size_t entries() const noexcept;

 private:
  // Sorted by issuer_key. Entries are shared between generations: publishing a new CRL for one
  // issuer copies pointers, not the other issuers' serials.
  std::vector<std::shared_ptr<const IssuerRevocations>> issuers_;
};

}  // namespace portcullis::revocation
