#include "portcullis/revocation/revocation_index.hpp"

#include <openssl/x509.h>

#include <algorithm>
#include <cstring>

namespace portcullis::revocation {

namespace {

// Picks candidates only; equal bits are confirmed with a full comparison. Key bits are random
// in their middle (an EC point's coordinates, an RSA modulus; the ends of an RSA key are DER
// headers and the exponent), so the length and 16 bytes from the middle separate real CAs.
std::uint64_t key_tag(std::string_view bits) noexcept {
  std::uint64_t h = bits.size() * 0x9e3779b97f4a7c15ull;
  if (bits.size() >= 16) {
    std::uint64_t a, b;
    const char* mid = bits.data() + bits.size() / 2 - 8;
    std::memcpy(&a, mid, 8);
    std::memcpy(&b, mid + 8, 8);
    h = (h ^ a) * 0xd6e8feb86659fd93ull;
    h = (h ^ (h >> 32) ^ b) * 0x9e3779b97f4a7c15ull;
  } else {
    for (const char c : bits) h = (h ^ static_cast<std::uint8_t>(c)) * 0x100000001b3ull;
  }
  return h ^ (h >> 29);
}

}  // namespace

KeyHash key_hash_of(const X509* cert) noexcept {
  KeyHash out{};
  unsigned int len = 0;
  X509_pubkey_digest(cert, EVP_sha1(), out.data(), &len);
  return out;
}

std::string_view public_key_bits(const X509* cert) noexcept {
  const ASN1_BIT_STRING* bits = cert ? X509_get0_pubkey_bitstr(cert) : nullptr;
  if (!bits) return {};
  return std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(bits)),
                          static_cast<std::size_t>(ASN1_STRING_length(bits)));
}

void IssuerRevocations::set_issuer(const X509* ca) {
  issuer_key = key_hash_of(ca);
  issuer_public_key = std::string(public_key_bits(ca));
}

RevocationIndex::RevocationIndex(std::vector<std::shared_ptr<const IssuerRevocations>> issuers)
    : issuers_(std::move(issuers)) {
  std::sort(issuers_.begin(), issuers_.end(),
            [](const auto& a, const auto& b) { return a->issuer_key < b->issuer_key; });
  by_key_bits_.reserve(issuers_.size());
  for (const auto& entry : issuers_) {
    if (entry->issuer_public_key.empty()) {
      all_have_key_bits_ = false;
      continue;
    }
    by_key_bits_.push_back({key_tag(entry->issuer_public_key), entry.get()});
  }
  std::sort(by_key_bits_.begin(), by_key_bits_.end(),
            [](const KeyTag& a, const KeyTag& b) { return a.tag < b.tag; });
}

const IssuerRevocations* RevocationIndex::issuer(const KeyHash& key) const noexcept {
  const auto it =
      std::lower_bound(issuers_.begin(), issuers_.end(), key,
                       [](const auto& entry, const KeyHash& k) { return entry->issuer_key < k; });
  return it != issuers_.end() && (*it)->issuer_key == key ? it->get() : nullptr;
}

const IssuerRevocations* RevocationIndex::issuer(const X509* ca) const noexcept {
  const auto bits = public_key_bits(ca);
  if (!bits.empty()) {
    const auto tag = key_tag(bits);
    auto it = std::lower_bound(by_key_bits_.begin(), by_key_bits_.end(), tag,
                               [](const KeyTag& t, std::uint64_t v) { return t.tag < v; });
    for (; it != by_key_bits_.end() && it->tag == tag; ++it) {
      if (it->entry->issuer_public_key == bits) return it->entry;
    }
  }
  // Entries built without key bits can only be found by the key's digest.
  return all_have_key_bits_ ? nullptr : issuer(key_hash_of(ca));
}

RevocationIndex::Result RevocationIndex::lookup(const KeyHash& issuer_key,
                                                const Serial& serial) const noexcept {
  const auto* entry = issuer(issuer_key);
  if (!entry) return Result::not_covered;
  return entry->revoked.contains(serial) ? Result::revoked : Result::good;
}

RevocationIndex::Result RevocationIndex::lookup(const X509* cert,
                                                const X509* issuer_cert) const noexcept {
  const auto* entry = issuer(issuer_cert);
  if (!entry) return Result::not_covered;
  return lookup(*entry, cert);
}

RevocationIndex::Result RevocationIndex::lookup(const IssuerRevocations& entry,
                                                const X509* cert) noexcept {
  if (const auto serial = serial_of(cert)) {
    return entry.revoked.contains(*serial) ? Result::revoked : Result::good;
  }
  // Serials beyond 20 octets are rare enough for a linear scan of the few kept aside.
  const ASN1_INTEGER* raw = X509_get0_serialNumber(cert);
  if (!raw) return Result::good;
  const std::string_view content(reinterpret_cast<const char*>(ASN1_STRING_get0_data(raw)),
                                 static_cast<std::size_t>(ASN1_STRING_length(raw)));
  return std::find(entry.oversized_serials.begin(), entry.oversized_serials.end(), content) !=
                 entry.oversized_serials.end()
             ? Result::revoked
             : Result::good;
}

std::size_t RevocationIndex::entries() const noexcept {
  std::size_t n = 0;
  for (const auto& i : issuers_) n += i->entries();
  return n;
}

}  // namespace portcullis::revocation
