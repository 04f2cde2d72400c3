#include "portcullis/revocation/revocation_index.hpp"

#include <openssl/x509.h>

#include <algorithm>
#include <cstring>

namespace portcullis::revocation {

KeyHash key_hash_of(const X509* cert) noexcept {
  KeyHash out{};
  unsigned int len = 0;
  X509_pubkey_digest(cert, EVP_sha1(), out.data(), &len);
  return out;
}

RevocationIndex::RevocationIndex(std::vector<std::shared_ptr<const IssuerRevocations>> issuers)
    : issuers_(std::move(issuers)) {
  std::sort(issuers_.begin(), issuers_.end(),
            [](const auto& a, const auto& b) { return a->issuer_key < b->issuer_key; });
}

const IssuerRevocations* RevocationIndex::issuer(const KeyHash& key) const noexcept {
  const auto it =
      std::lower_bound(issuers_.begin(), issuers_.end(), key,
                       [](const auto& entry, const KeyHash& k) { return entry->issuer_key < k; });
  return it != issuers_.end() && (*it)->issuer_key == key ? it->get() : nullptr;
}

RevocationIndex::Result RevocationIndex::lookup(const KeyHash& issuer_key,
                                                const Serial& serial) const noexcept {
  const auto* entry = issuer(issuer_key);
  if (!entry) return Result::not_covered;
  return std::binary_search(entry->revoked.begin(), entry->revoked.end(), serial) ? Result::revoked
                                                                                  : Result::good;
}

RevocationIndex::Result RevocationIndex::lookup(const X509* cert,
                                                const X509* issuer_cert) const noexcept {
  const auto* entry = issuer(key_hash_of(issuer_cert));
  if (!entry) return Result::not_covered;
  return lookup(*entry, cert);
}

RevocationIndex::Result RevocationIndex::lookup(const IssuerRevocations& issuer_entry,
                                                const X509* cert) noexcept {
  const auto* entry = &issuer_entry;
  if (const auto serial = serial_of(cert)) {
    return std::binary_search(entry->revoked.begin(), entry->revoked.end(), *serial)
               ? Result::revoked
               : Result::good;
  }
  // Serials beyond 20 octets are rare enough for a linear scan of the few kept aside.
  const ASN1_INTEGER* raw = X509_get0_serialNumber(cert);
  const std::string content(reinterpret_cast<const char*>(ASN1_STRING_get0_data(raw)),
                            static_cast<std::size_t>(ASN1_STRING_length(raw)));
  return std::find(entry->oversized_serials.begin(), entry->oversized_serials.end(), content) !=
                 entry->oversized_serials.end()
             ? Result::revoked
             : Result::good;
}

std::size_t RevocationIndex::entries() const noexcept {
  std::size_t n = 0;
  for (const auto& i : issuers_) n += i->revoked.size() + i->oversized_serials.size();
  return n;
}

}  // namespace portcullis::revocation
