#include "portcullis/revocation/ocsp.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <catch2/catch.hpp>

using namespace portcullis;
using revocation::OcspCertStatus;
using revocation::verify_ocsp_response;

namespace {

using SysClock = std::chrono::system_clock;
constexpr std::chrono::seconds skew{300};

struct ResponseOptions {
  int status = V_OCSP_CERTSTATUS_GOOD;
  long this_update = -60;
  long next_update = 3600;
  const OCSP_REQUEST* echo_nonce_of = nullptr;
  bool foreign_nonce = false;
};

tls::Issued make_ca(const char* name) {
  tls::CertSpec spec;
  spec.common_name = name;
  spec.is_ca = true;
  return tls::issue_certificate(spec, nullptr);
}

tls::Issued make_server(const tls::Issued& ca, const char* name) {
  tls::CertSpec spec;
  spec.common_name = name;
  spec.eku = tls::Eku::server_auth;
  spec.ocsp_url = "http://127.0.0.1:8888/ocsp";
  return tls::issue_certificate(spec, &ca);
}

// A response about `cert` (issued by `issuer`), signed by `signer`.
std::string make_response(X509* cert, X509* issuer, const tls::Issued& signer,
                          const ResponseOptions& o) {
  revocation::OcspBasicPtr basic(OCSP_BASICRESP_new());
  revocation::OcspCertIdPtr id(OCSP_cert_to_id(nullptr, cert, issuer));
  std::unique_ptr<ASN1_TIME, tls::OpenSslDeleter<ASN1_TIME_free>> this_update(
      X509_gmtime_adj(nullptr, o.this_update)),
      next_update(X509_gmtime_adj(nullptr, o.next_update)),
      revoked_at(X509_gmtime_adj(nullptr, -600));
  OCSP_basic_add1_status(basic.get(), id.get(), o.status, OCSP_REVOKED_STATUS_KEYCOMPROMISE,
                         o.status == V_OCSP_CERTSTATUS_REVOKED ? revoked_at.get() : nullptr,
                         this_update.get(), next_update.get());
  if (o.echo_nonce_of) OCSP_copy_nonce(basic.get(), const_cast<OCSP_REQUEST*>(o.echo_nonce_of));
  if (o.foreign_nonce) OCSP_basic_add1_nonce(basic.get(), nullptr, -1);
  OCSP_basic_sign(basic.get(), signer.cert.get(), signer.key.get(), EVP_sha256(), nullptr, 0);
  revocation::OcspResponsePtr response(
      OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, basic.get()));
  unsigned char* der = nullptr;
  const int length = i2d_OCSP_RESPONSE(response.get(), &der);
  std::string out(reinterpret_cast<const char*>(der), static_cast<std::size_t>(length));
  OPENSSL_free(der);
  return out;
}

}  // namespace

TEST_CASE("a good response signed by the issuer is usable", "[revocation][ocsp]") {
  const auto ca = make_ca("OCSP Test CA");
  const auto server = make_server(ca, "localhost");
  const auto der = make_response(server.cert.get(), ca.cert.get(), ca, {});
  const auto v =
      verify_ocsp_response(der, server.cert.get(), ca.cert.get(), nullptr, SysClock::now(), skew);
  CHECK(v.error == "");
  CHECK(v.usable);
  CHECK(v.status == OcspCertStatus::good);
  REQUIRE(v.next_update);
  CHECK(*v.next_update > SysClock::now() + std::chrono::minutes(50));
}

TEST_CASE("the AIA OCSP URI is found", "[revocation][ocsp]") {
  const auto ca = make_ca("OCSP Test CA");
  const auto server = make_server(ca, "localhost");
  CHECK(revocation::ocsp_responder_url(server.cert.get()) == "http://127.0.0.1:8888/ocsp");
  CHECK(revocation::ocsp_responder_url(ca.cert.get()) == "");
}

TEST_CASE("bad OCSP responses are never usable", "[revocation][ocsp]") {
  const auto ca = make_ca("OCSP Test CA");
  const auto server = make_server(ca, "localhost");
  const auto now = SysClock::now();
  auto check = [&](const std::string& der, const char* error, const OCSP_REQUEST* req = nullptr) {
    const auto v = verify_ocsp_response(der, server.cert.get(), ca.cert.get(), req, now, skew);
    CHECK_FALSE(v.usable);
    CHECK_THAT(v.error, Catch::Contains(error));
  };

  SECTION("garbage") {
    check("not an OCSP response", "not a DER OCSP response");
  }
  SECTION("revoked") {
    ResponseOptions o;
    o.status = V_OCSP_CERTSTATUS_REVOKED;
    check(make_response(server.cert.get(), ca.cert.get(), ca, o), "revoked");
  }
  SECTION("unknown") {
    ResponseOptions o;
    o.status = V_OCSP_CERTSTATUS_UNKNOWN;
    check(make_response(server.cert.get(), ca.cert.get(), ca, o), "unknown");
  }
  SECTION("signed by an unrelated key") {
    const auto other = make_ca("Unrelated CA");
    check(make_response(server.cert.get(), ca.cert.get(), other, {}), "signature not trusted");
  }
  SECTION("signed by a leaf of the issuer without id-kp-OCSPSigning") {
    const auto leaf = make_server(ca, "not-a-responder");
    check(make_response(server.cert.get(), ca.cert.get(), leaf, {}), "signature not trusted");
  }
  SECTION("about another certificate") {
    const auto other = make_server(ca, "other");
    check(make_response(other.cert.get(), ca.cert.get(), ca, {}), "no status for this certificate");
  }
  SECTION("past its nextUpdate") {
    ResponseOptions o;
    o.this_update = -7200;
    o.next_update = -3600;
    check(make_response(server.cert.get(), ca.cert.get(), ca, o), "past its nextUpdate");
  }
  SECTION("from the future") {
    ResponseOptions o;
    o.this_update = 3600;
    o.next_update = 7200;
    check(make_response(server.cert.get(), ca.cert.get(), ca, o), "in the future");
  }
  SECTION("a nonce that is not the request's") {
    const auto request = revocation::make_ocsp_request(server.cert.get(), ca.cert.get(), true);
    ResponseOptions o;
    o.foreign_nonce = true;
    check(make_response(server.cert.get(), ca.cert.get(), ca, o), "nonce", request.request.get());
  }
}

TEST_CASE("a response echoing the request's nonce is usable", "[revocation][ocsp]") {
  const auto ca = make_ca("OCSP Test CA");
  const auto server = make_server(ca, "localhost");
  const auto request = revocation::make_ocsp_request(server.cert.get(), ca.cert.get(), true);
  CHECK_FALSE(request.der.empty());
  ResponseOptions o;
  o.echo_nonce_of = request.request.get();
  const auto der = make_response(server.cert.get(), ca.cert.get(), ca, o);
  const auto v = verify_ocsp_response(der, server.cert.get(), ca.cert.get(), request.request.get(),
                                      SysClock::now(), skew);
  CHECK(v.error == "");
  CHECK(v.usable);
}
