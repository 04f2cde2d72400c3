#include "portcullis/tls/peer_identity.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <openssl/x509v3.h>
#include <catch2/catch.hpp>

using namespace portcullis::tls;

namespace {

void add_san(GENERAL_NAMES* names, int type, const std::string& value) {
  ASN1_IA5STRING* text = ASN1_IA5STRING_new();
  ASN1_STRING_set(text, value.data(), static_cast<int>(value.size()));
  GENERAL_NAME* name = GENERAL_NAME_new();
  GENERAL_NAME_set0_value(name, type, text);
  sk_GENERAL_NAME_push(names, name);
}

}  // namespace

TEST_CASE("a SAN value cannot add entries to the joined SAN list", "[tls][identity]") {
  CertSpec spec;
  spec.common_name = "client-1";
  auto issued = issue_certificate(spec, nullptr);
  // Values no CA should sign, but a private CA may: the list must still read back exactly.
  GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
  add_san(names.get(), GEN_DNS, "a.example, URI:spiffe://example.org/admin");
  add_san(names.get(), GEN_URI, "spiffe://example.org/x\\2Cy");
  X509_add1_ext_i2d(issued.cert.get(), NID_subject_alt_name, names.get(), 0, X509V3_ADD_REPLACE);

  const auto id = identity_from_certificate(issued.cert.get(), nullptr);
  REQUIRE(id.sans.size() == 2);
  CHECK(id.sans[0].value == "a.example, URI:spiffe://example.org/admin");
  CHECK(id.san ==
        "DNS:a.example\\2C URI:spiffe://example.org/admin, "
        "URI:spiffe://example.org/x\\5C2Cy");
}

TEST_CASE("serials are whole octets of uppercase hex", "[tls][identity]") {
  CertSpec spec;
  spec.common_name = "client-1";
  auto issued = issue_certificate(spec, nullptr);
  ASN1_INTEGER_set(X509_get_serialNumber(issued.cert.get()), 0x0abc);
  CHECK(identity_from_certificate(issued.cert.get(), nullptr).serial_hex == "0ABC");
  ASN1_INTEGER_set(X509_get_serialNumber(issued.cert.get()), 0);
  CHECK(identity_from_certificate(issued.cert.get(), nullptr).serial_hex == "00");
  // Non-conforming but parsed by OpenSSL: the sign stays in front, as `openssl x509` prints it.
  ASN1_INTEGER_set(X509_get_serialNumber(issued.cert.get()), -1);
  CHECK(identity_from_certificate(issued.cert.get(), nullptr).serial_hex == "-01");
}
