#include "portcullis/tls/pki_builder.hpp"

#include "test_support.hpp"

#include <openssl/err.h>
#include <catch2/catch.hpp>

#include <sys/stat.h>

using namespace portcullis::tls;
using namespace portcullis::tls::testing;

namespace {

// Runs OpenSSL's own chain verification for the SSL client purpose; returns the X509_V_ERR code.
int verify_client_chain(X509* anchor, X509* leaf, const std::vector<X509*>& untrusted) {
  X509StorePtr store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), anchor);
  X509StackPtr chain(sk_X509_new_null());
  for (X509* cert : untrusted) {
    X509_up_ref(cert);
    sk_X509_push(chain.get(), cert);
  }
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), leaf, chain.get());
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  X509_verify_cert(ctx.get());
  ERR_clear_error();
  return X509_STORE_CTX_get_error(ctx.get());
}

std::string extension_text(X509* cert, int nid) {
  const int index = X509_get_ext_by_NID(cert, nid, -1);
  if (index < 0) return {};
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509V3_EXT_print(bio.get(), X509_get_ext(cert, index), 0, 0);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

}  // namespace

TEST_CASE("issued certificates chain root -> intermediate -> leaf", "[pki]") {
  const auto root = issue_certificate(ca_spec("Test Root"), nullptr);
  auto int_spec = ca_spec("Test Intermediate");
  int_spec.path_len = 0;
  int_spec.key = KeyType::rsa2048;
  const auto intermediate = issue_certificate(int_spec, &root);
  auto spec = leaf_spec("client-a");
  spec.sans = {"DNS:a.example", "URI:spiffe://td/a", "email:a@example.org", "IP:127.0.0.1"};
  spec.crl_distribution_point = "http://127.0.0.1:8081/int.crl";
  spec.ocsp_url = "http://127.0.0.1:8082/";
  const auto leaf = issue_certificate(spec, &intermediate);

  CHECK(verify_client_chain(root.cert.get(), leaf.cert.get(), {intermediate.cert.get()}) ==
        X509_V_OK);
  // Without the intermediate there is no path.
  CHECK(verify_client_chain(root.cert.get(), leaf.cert.get(), {}) ==
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);

  SECTION("CA extensions") {
    X509* ca = intermediate.cert.get();
    CHECK(X509_check_ca(ca) == 1);
    CHECK(extension_text(ca, NID_basic_constraints) == "CA:TRUE, pathlen:0");
    CHECK(X509_get_ext_by_NID(ca, NID_ext_key_usage, -1) < 0);
    CHECK(X509_get_key_usage(ca) == (KU_KEY_CERT_SIGN | KU_CRL_SIGN));
    CHECK(EVP_PKEY_get_base_id(X509_get0_pubkey(ca)) == EVP_PKEY_RSA);
    CHECK(EVP_PKEY_get_bits(X509_get0_pubkey(ca)) == 2048);
    const int crit = X509_get_ext_by_NID(ca, NID_basic_constraints, -1);
    CHECK(X509_EXTENSION_get_critical(X509_get_ext(ca, crit)) == 1);
    // The intermediate's AKI is the root's SKI.
    CHECK(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(ca),
                                X509_get0_subject_key_id(root.cert.get())) == 0);
    CHECK(X509_self_signed(root.cert.get(), 1) == 1);
  }

  SECTION("leaf extensions") {
    X509* cert = leaf.cert.get();
    CHECK(X509_check_ca(cert) == 0);
    CHECK(X509_get_key_usage(cert) == KU_DIGITAL_SIGNATURE);
    CHECK(X509_get_extended_key_usage(cert) == XKU_SSL_CLIENT);
    CHECK(EVP_PKEY_get_base_id(X509_get0_pubkey(cert)) == EVP_PKEY_EC);
    // Signed by the RSA intermediate, with SHA-256.
    CHECK(X509_get_signature_nid(cert) == NID_sha256WithRSAEncryption);
    CHECK(X509_get_signature_nid(intermediate.cert.get()) == NID_ecdsa_with_SHA256);
    const auto san = extension_text(cert, NID_subject_alt_name);
    CHECK(san.find("DNS:a.example") != std::string::npos);
    CHECK(san.find("URI:spiffe://td/a") != std::string::npos);
    CHECK(san.find("email:a@example.org") != std::string::npos);
    CHECK(san.find("IP Address:127.0.0.1") != std::string::npos);
    CHECK(extension_text(cert, NID_crl_distribution_points).find("http://127.0.0.1:8081/int.crl") !=
          std::string::npos);
    CHECK(extension_text(cert, NID_info_access).find("OCSP - URI:http://127.0.0.1:8082/") !=
          std::string::npos);
    // 16 random bytes, positive.
    BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
    CHECK(BN_num_bytes(serial.get()) == 16);
    CHECK(!BN_is_negative(serial.get()));
    CHECK(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert),
                           X509_get0_serialNumber(intermediate.cert.get())) != 0);
  }

  SECTION("RSA leaf gets keyEncipherment, both EKUs") {
    auto rsa = leaf_spec("rsa-client", Eku::both);
    rsa.key = KeyType::rsa2048;
    const auto issued = issue_certificate(rsa, &intermediate);
    CHECK(X509_get_key_usage(issued.cert.get()) == (KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT));
    CHECK(X509_get_extended_key_usage(issued.cert.get()) == (XKU_SSL_CLIENT | XKU_SSL_SERVER));
    CHECK(X509_get_signature_nid(issued.cert.get()) == NID_sha256WithRSAEncryption);
  }

  SECTION("serverAuth-only leaf fails the client purpose") {
    const auto server = issue_certificate(leaf_spec("srv", Eku::server_auth), &intermediate);
    CHECK(verify_client_chain(root.cert.get(), server.cert.get(), {intermediate.cert.get()}) ==
          X509_V_ERR_INVALID_PURPOSE);
  }

  SECTION("validity offsets") {
    auto spec_expired = leaf_spec("old");
    spec_expired.not_before_offset = -std::chrono::hours(48);
    spec_expired.not_after_offset = -std::chrono::hours(24);
    const auto old = issue_certificate(spec_expired, &intermediate);
    CHECK(X509_cmp_current_time(X509_get0_notAfter(old.cert.get())) < 0);
    CHECK(verify_client_chain(root.cert.get(), old.cert.get(), {intermediate.cert.get()}) ==
          X509_V_ERR_CERT_HAS_EXPIRED);
  }
}

TEST_CASE("extra subject attributes precede the CN", "[pki]") {
  auto spec = leaf_spec("svc");
  spec.extra_subject = {{"O", "Example"}, {"OU", "Payments"}};
  const auto issued = issue_certificate(spec, nullptr);
  char buf[256];
  X509_NAME_oneline(X509_get_subject_name(issued.cert.get()), buf, sizeof(buf));
  CHECK(std::string(buf) == "/O=Example/OU=Payments/CN=svc");
  spec.extra_subject = {{"NoSuchAttribute", "x"}};
  CHECK_THROWS_AS(issue_certificate(spec, nullptr), TlsError);
}

TEST_CASE("PEM round trip and key files", "[pki]") {
  TempDir dir;
  const auto issued = issue_certificate(leaf_spec("round-trip"), nullptr);
  write_file(dir / "sub/cert.pem", to_pem(issued.cert.get()));
  write_file(dir / "sub/cert.key", to_pem(issued.key.get()), true);
  const auto back = read_first_cert(dir / "sub/cert.pem");
  REQUIRE(back);
  CHECK(X509_cmp(back.get(), issued.cert.get()) == 0);
  CHECK(to_pem(issued.key.get()).rfind("-----BEGIN PRIVATE KEY-----", 0) == 0);
  struct stat st {};
  REQUIRE(::stat((dir / "sub/cert.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("demo PKI files", "[pki]") {
  TempDir dir;
  write_demo_pki(dir.path());
  for (const char* name :
       {"root-ca.pem", "intermediate-ca.pem", "truststore.pem", "server-chain.pem", "server.key",
        "client.pem", "client.key", "client-expired.pem", "client-expired.key",
        "client-foreign.pem", "client-foreign.key", "client-noeku.pem", "client-noeku.key"}) {
    INFO(name);
    CHECK(std::filesystem::is_regular_file(dir / name));
  }
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path()))
    ++files;
  CHECK(files == 13);

  const auto root = read_first_cert(dir / "root-ca.pem");
  const auto trust = read_all_certs(dir / "truststore.pem");
  CHECK(trust.size() == 2);
  const auto server = read_all_certs(dir / "server-chain.pem");
  REQUIRE(server.size() == 2);
  CHECK(X509_check_host(server[0].get(), "localhost", 0, 0, nullptr) == 1);
  CHECK(X509_check_ip_asc(server[0].get(), "127.0.0.1", 0) == 1);

  const auto good = read_all_certs(dir / "client.pem");
  REQUIRE(good.size() == 2);
  CHECK(verify_client_chain(root.get(), good[0].get(), {good[1].get()}) == X509_V_OK);
  const auto expired = read_all_certs(dir / "client-expired.pem");
  REQUIRE(expired.size() == 2);
  CHECK(verify_client_chain(root.get(), expired[0].get(), {expired[1].get()}) ==
        X509_V_ERR_CERT_HAS_EXPIRED);
  const auto noeku = read_all_certs(dir / "client-noeku.pem");
  REQUIRE(noeku.size() == 2);
  CHECK(verify_client_chain(root.get(), noeku[0].get(), {noeku[1].get()}) ==
        X509_V_ERR_INVALID_PURPOSE);
  const auto foreign = read_all_certs(dir / "client-foreign.pem");
  REQUIRE(!foreign.empty());
  CHECK(verify_client_chain(root.get(), foreign[0].get(), {}) != X509_V_OK);
}
