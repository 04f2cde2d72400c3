// libFuzzer target: the direct DER CRL parser on arbitrary bytes, checked against OpenSSL.
// Whatever the input, parse_crl either throws CrlError or returns; when OpenSSL's own decoder
// also accepts the input and every serial in it is a conforming one (non-negative, at most 20
// octets), both must list the same serials in the same order.

#include "portcullis/revocation/crl.hpp"

#include <openssl/x509.h>

#include <cstdint>
#include <cstdlib>
#include <string_view>

using namespace portcullis;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  revocation::ParsedCrl parsed;
  try {
    parsed = revocation::parse_crl(bytes);
  } catch (const revocation::CrlError&) {
    return 0;
  }

  const unsigned char* p = data;
  tls::X509CrlPtr reference(d2i_X509_CRL(nullptr, &p, static_cast<long>(size)));
  if (!reference || p != data + size) return 0;
  STACK_OF(X509_REVOKED)* list = X509_CRL_get_REVOKED(reference.get());
  const int n = list ? sk_X509_REVOKED_num(list) : 0;
  std::vector<revocation::Serial> expected;
  for (int i = 0; i < n; ++i) {
    const ASN1_INTEGER* serial = X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(list, i));
    if (ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER) return 0;
    const auto normalised = revocation::serial_from_magnitude(ASN1_STRING_get0_data(serial),
                                                              ASN1_STRING_length(serial));
    if (!normalised) return 0;
    expected.push_back(*normalised);
  }
  if (parsed.revoked != expected || !parsed.oversized_serials.empty()) std::abort();
  return 0;
}
