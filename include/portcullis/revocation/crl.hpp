#pragma once
// CRL parsing and verification sized for million-entry lists: the revoked-certificates list is
// walked directly in DER (OpenSSL's d2i_X509_CRL costs ~1.35 s and ~300 bytes per entry at
// 1M entries); only the small parts (issuer name, times, extensions, signature algorithm) go
// through OpenSSL's decoders.
// Thread-safety: stateless functions; a ParsedCrl is a plain value that refers to the bytes it
// was parsed from (see parse_crl).

#include "portcullis/tls/openssl.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::revocation {

// Serial numbers up to 20 octets (RFC 5280 §4.1.2.2), big-endian, left-padded with zeros.
using Serial = std::array<std::uint8_t, 20>;

// Normalises the content octets of a DER INTEGER (leading 0x00 sign octets dropped).
// Returns nullopt for negative or longer-than-20-octet serials.
std::optional<Serial> serial_from_der_content(const std::uint8_t* data, std::size_t size) noexcept;
// From magnitude octets (OpenSSL's ASN1_INTEGER representation).
std::optional<Serial> serial_from_magnitude(const std::uint8_t* data, std::size_t size) noexcept;
std::optional<Serial> serial_of(const X509* cert) noexcept;

class CrlError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ParsedCrl {
  std::string issuer_der;  // DER of the issuer Name
  std::chrono::system_clock::time_point this_update;
  std::optional<std::chrono::system_clock::time_point> next_update;
  std::optional<std::string> crl_number;  // hex of the CRLNumber INTEGER, when present
  // In the order of the CRL, duplicates included: SerialSet orders and deduplicates them.
  std::vector<Serial> revoked;
  std::vector<std::string> oversized_serials;  // serials longer than 20 octets (non-conforming CAs)
  // The signed bytes: a view into the DER given to parse_crl (or into der_from_pem), not a
  // copy, which for a million-entry CRL would be another 35 MB.
  std::string_view tbs;
  std::string signature_alg;  // DER AlgorithmIdentifier
  std::string signature;      // signature bits
  // The decoded DER when parse_crl was given PEM; tbs points into it.
  std::shared_ptr<const std::string> der_from_pem;
};

// Accepts DER or PEM ("-----BEGIN X509 CRL-----"). Throws CrlError with a readable reason:
// malformed DER, delta CRLs and partitioned / indirect (issuingDistributionPoint) CRLs, which
// this version rejects rather than apply incompletely.
// The result refers to `bytes` (ParsedCrl::tbs): keep them alive until verify_crl is done.
ParsedCrl parse_crl(std::string_view bytes);
inline ParsedCrl parse_crl(const char* bytes) {
  return parse_crl(std::string_view(bytes));
}
// A temporary would leave ParsedCrl::tbs dangling.
ParsedCrl parse_crl(std::string&& bytes) = delete;

// Verifies the CRL's signature with `issuer`'s public key, that `issuer`'s subject is the CRL's
// issuer, and that `issuer` may sign CRLs (cRLSign when keyUsage is present). Throws CrlError.
void verify_crl(const ParsedCrl& crl, X509* issuer);

// CRLNumber ordering: negative when a < b (hex strings of non-negative integers).
int compare_crl_numbers(const std::string& a, const std::string& b) noexcept;

}  // namespace portcullis::revocation
