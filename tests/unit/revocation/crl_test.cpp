#include "portcullis/revocation/crl.hpp"
#include "portcullis/revocation/revocation_index.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <openssl/pem.h>

#include <catch2/catch.hpp>

#include <random>

using namespace portcullis;
using revocation::CrlError;
using revocation::parse_crl;
using revocation::RevocationIndex;
using revocation::verify_crl;

namespace {

struct CrlOptions {
  std::vector<const ASN1_INTEGER*> serials;
  std::vector<std::vector<std::uint8_t>> raw_serials;  // content octets, for bulk or edge cases
  long crl_number = 1;
  long this_update = -60;
  long next_update = 3600;
  bool delta = false;
  bool idp = false;
  bool pem = false;
};

std::string make_crl(const tls::Issued& ca, const CrlOptions& o, EVP_PKEY* signing_key = nullptr) {
  tls::X509CrlPtr crl(X509_CRL_new());
  X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2);
  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca.cert.get()));
  std::unique_ptr<ASN1_TIME, tls::OpenSslDeleter<ASN1_TIME_free>> t(ASN1_TIME_new());
  X509_gmtime_adj(t.get(), o.this_update);
  X509_CRL_set1_lastUpdate(crl.get(), t.get());
  X509_gmtime_adj(t.get(), o.next_update);
  X509_CRL_set1_nextUpdate(crl.get(), t.get());
  auto add = [&](ASN1_INTEGER* serial) {
    X509_REVOKED* r = X509_REVOKED_new();
    X509_REVOKED_set_serialNumber(r, serial);
    X509_gmtime_adj(t.get(), -120);
    X509_REVOKED_set_revocationDate(r, t.get());
    X509_CRL_add0_revoked(crl.get(), r);
  };
  for (const auto* s : o.serials) add(const_cast<ASN1_INTEGER*>(s));
  for (const auto& raw : o.raw_serials) {
    tls::BignumPtr bn(BN_bin2bn(raw.data(), static_cast<int>(raw.size()), nullptr));
    tls::Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    add(serial.get());
  }
  tls::Asn1IntegerPtr number(ASN1_INTEGER_new());
  ASN1_INTEGER_set(number.get(), o.crl_number);
  X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, 0);
  if (o.delta) X509_CRL_add1_ext_i2d(crl.get(), NID_delta_crl, number.get(), 1, 0);
  if (o.idp) {
    ISSUING_DIST_POINT* idp = ISSUING_DIST_POINT_new();
    idp->onlyuser = 0xff;
    X509_CRL_add1_ext_i2d(crl.get(), NID_issuing_distribution_point, idp, 1, 0);
    ISSUING_DIST_POINT_free(idp);
  }
  X509_CRL_sort(crl.get());
  X509_CRL_sign(crl.get(), signing_key ? signing_key : ca.key.get(), EVP_sha256());
  if (o.pem) {
    tls::BioPtr bio(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509_CRL(bio.get(), crl.get());
    char* data = nullptr;
    const long len = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(len));
  }
  unsigned char* der = nullptr;
  const int len = i2d_X509_CRL(crl.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return out;
}

tls::Issued make_ca(const char* name, tls::KeyType key = tls::KeyType::ec_p256) {
  tls::CertSpec spec;
  spec.common_name = name;
  spec.is_ca = true;
  spec.key = key;
  return tls::issue_certificate(spec, nullptr);
}

tls::Issued make_leaf(const tls::Issued& ca, const char* name) {
  tls::CertSpec spec;
  spec.common_name = name;
  return tls::issue_certificate(spec, &ca);
}

}  // namespace

TEST_CASE("a CRL parses to the same entries OpenSSL sees", "[revocation][crl]") {
  const auto ca = make_ca("CRL Test CA");
  std::mt19937_64 rng(7);
  CrlOptions o;
  o.crl_number = 42;
  for (int i = 0; i < 500; ++i) {
    std::vector<std::uint8_t> raw(1 + rng() % 20);
    for (auto& b : raw) b = static_cast<std::uint8_t>(rng());
    raw[0] |= 1;
    if (raw.size() == 20) raw[0] &= 0x7f;
    o.raw_serials.push_back(raw);
  }
  const auto der = make_crl(ca, o);
  const auto parsed = parse_crl(der);

  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  tls::X509CrlPtr reference(d2i_X509_CRL(nullptr, &p, static_cast<long>(der.size())));
  REQUIRE(reference);
  STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(reference.get());
  std::vector<revocation::Serial> expected;
  for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i) {
    const ASN1_INTEGER* s = X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revoked, i));
    const auto serial = revocation::serial_from_magnitude(
        ASN1_STRING_get0_data(s), static_cast<std::size_t>(ASN1_STRING_length(s)));
    REQUIRE(serial.has_value());
    expected.push_back(*serial);
  }
  // parse_crl keeps the CRL's order and duplicates; the SerialSet orders and deduplicates.
  CHECK(parsed.revoked == expected);
  std::sort(expected.begin(), expected.end());
  expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
  CHECK(parsed.oversized_serials.empty());
  const revocation::SerialSet set(parsed.revoked);
  REQUIRE(set.size() == expected.size());
  CHECK(set.sorted() == expected);
  for (const auto& serial : expected) CHECK(set.contains(serial));
  CHECK(parsed.crl_number == std::string("2A"));
  REQUIRE(parsed.next_update.has_value());
  CHECK(*parsed.next_update > parsed.this_update);
  CHECK_NOTHROW(verify_crl(parsed, ca.cert.get()));
  CHECK(X509_CRL_verify(reference.get(), X509_get0_pubkey(ca.cert.get())) == 1);
}

TEST_CASE("PEM CRLs and RSA signatures are accepted", "[revocation][crl]") {
  const auto ca = make_ca("RSA CA", tls::KeyType::rsa2048);
  const auto leaf = make_leaf(ca, "leaf");
  CrlOptions o;
  o.pem = true;
  o.serials.push_back(X509_get0_serialNumber(leaf.cert.get()));
  const auto pem = make_crl(ca, o);
  const auto parsed = parse_crl(pem);
  REQUIRE(parsed.revoked.size() == 1);
  CHECK_NOTHROW(verify_crl(parsed, ca.cert.get()));
}

TEST_CASE("CRLs that must not be used are refused with a reason", "[revocation][crl]") {
  const auto ca = make_ca("Real CA");
  const auto other = make_ca("Other CA");
  CrlOptions o;

  SECTION("bad signature") {
    const auto der = make_crl(ca, o, other.key.get());
    const auto parsed = parse_crl(der);
    CHECK_THROWS_WITH(verify_crl(parsed, ca.cert.get()), Catch::Contains("bad CRL signature"));
  }
  SECTION("wrong issuer") {
    const auto der = make_crl(other, o);
    const auto parsed = parse_crl(der);
    CHECK_THROWS_WITH(verify_crl(parsed, ca.cert.get()), Catch::Contains("issuer"));
  }
  SECTION("issuer may not sign CRLs") {
    const auto leaf = make_leaf(ca, "not a CA");
    const auto der = make_crl(leaf, o);
    const auto parsed = parse_crl(der);
    CHECK_THROWS_WITH(verify_crl(parsed, leaf.cert.get()), Catch::Contains("cRLSign"));
  }
  SECTION("delta CRL") {
    o.delta = true;
    const auto der = make_crl(ca, o);
    CHECK_THROWS_WITH(parse_crl(der), Catch::Contains("delta CRLs are not supported"));
  }
  SECTION("partitioned CRL") {
    o.idp = true;
    const auto der = make_crl(ca, o);
    CHECK_THROWS_WITH(parse_crl(der), Catch::Contains("issuingDistributionPoint"));
  }
  SECTION("garbage and truncation") {
    CHECK_THROWS_AS(parse_crl("not a crl at all"), CrlError);
    const auto der = make_crl(ca, o);
    CHECK_THROWS_AS(parse_crl(std::string_view(der).substr(0, der.size() - 10)), CrlError);
    CHECK_THROWS_AS(parse_crl("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"),
                    CrlError);
  }
}

TEST_CASE("CRL numbers compare as integers", "[revocation][crl]") {
  CHECK(revocation::compare_crl_numbers("0A", "09") > 0);
  CHECK(revocation::compare_crl_numbers("0100", "FF") > 0);
  CHECK(revocation::compare_crl_numbers("2A", "2A") == 0);
  CHECK(revocation::compare_crl_numbers("1", "02") < 0);
}

TEST_CASE("the index finds revoked serials by issuer key", "[revocation][index]") {
  const auto ca = make_ca("Index CA");
  const auto other = make_ca("Uncovered CA");
  const auto revoked = make_leaf(ca, "revoked");
  const auto good = make_leaf(ca, "good");
  const auto elsewhere = make_leaf(other, "elsewhere");

  CrlOptions o;
  o.serials.push_back(X509_get0_serialNumber(revoked.cert.get()));
  const auto der = make_crl(ca, o);
  auto parsed = parse_crl(der);
  auto entry = std::make_shared<revocation::IssuerRevocations>();
  entry->set_issuer(ca.cert.get());
  entry->revoked = revocation::SerialSet(std::move(parsed.revoked));
  RevocationIndex index({entry});

  CHECK(index.lookup(revoked.cert.get(), ca.cert.get()) == RevocationIndex::Result::revoked);
  CHECK(index.lookup(good.cert.get(), ca.cert.get()) == RevocationIndex::Result::good);
  CHECK(index.lookup(elsewhere.cert.get(), other.cert.get()) ==
        RevocationIndex::Result::not_covered);
  CHECK(index.entries() == 1);
}
