#include "portcullis/revocation/ocsp.hpp"

#include <openssl/err.h>

#include <fmt/format.h>

#include <ctime>

namespace portcullis::revocation {

namespace {

using SysClock = std::chrono::system_clock;

struct StringStackFree {
  void operator()(STACK_OF(OPENSSL_STRING) * s) const noexcept { X509_email_free(s); }
};

std::optional<SysClock::time_point> to_time_point(const ASN1_GENERALIZEDTIME* t) {
  if (!t) return std::nullopt;
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  return SysClock::from_time_t(timegm(&tm));
}

OcspVerdict rejected(std::string error) {
  ERR_clear_error();
  OcspVerdict v;
  v.error = std::move(error);
  return v;
}

}  // namespace

const char* to_string(OcspCertStatus status) {
  switch (status) {
    case OcspCertStatus::good:
      return "good";
    case OcspCertStatus::revoked:
      return "revoked";
    case OcspCertStatus::unknown:
      return "unknown";
  }
  return "unknown";
}

std::string ocsp_responder_url(X509* cert) {
  std::unique_ptr<STACK_OF(OPENSSL_STRING), StringStackFree> uris(X509_get1_ocsp(cert));
  if (!uris) return {};
  for (int i = 0; i < sk_OPENSSL_STRING_num(uris.get()); ++i) {
    std::string uri = sk_OPENSSL_STRING_value(uris.get(), i);
    if (uri.rfind("http://", 0) == 0) return uri;
  }
  return {};
}

OcspRequest make_ocsp_request(X509* cert, X509* issuer, bool nonce) {
  OcspRequest out;
  out.request.reset(OCSP_REQUEST_new());
  if (!out.request) tls::throw_openssl_error("cannot create an OCSP request");
  OcspCertIdPtr id(OCSP_cert_to_id(nullptr, cert, issuer));
  if (!id) tls::throw_openssl_error("cannot build the OCSP CertID");
  if (!OCSP_request_add0_id(out.request.get(), id.get())) {
    tls::throw_openssl_error("cannot add the CertID to the OCSP request");
  }
  id.release();  // owned by the request now
  if (nonce && OCSP_request_add1_nonce(out.request.get(), nullptr, -1) != 1) {
    tls::throw_openssl_error("cannot add a nonce to the OCSP request");
  }
  unsigned char* der = nullptr;
  const int length = i2d_OCSP_REQUEST(out.request.get(), &der);
  if (length <= 0) tls::throw_openssl_error("cannot encode the OCSP request");
  out.der.assign(reinterpret_cast<const char*>(der), static_cast<std::size_t>(length));
  OPENSSL_free(der);
  return out;
}

OcspVerdict verify_ocsp_response(std::string_view der, X509* cert, X509* issuer,
                                 const OCSP_REQUEST* request, SysClock::time_point now,
                                 std::chrono::seconds skew) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  OcspResponsePtr response(d2i_OCSP_RESPONSE(nullptr, &p, static_cast<long>(der.size())));
  if (!response || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return rejected("not a DER OCSP response");
  }
  const int response_status = OCSP_response_status(response.get());
  if (response_status != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
    return rejected(fmt::format("OCSP response status {} ({})",
                                OCSP_response_status_str(response_status), response_status));
  }
  OcspBasicPtr basic(OCSP_response_get1_basic(response.get()));
  if (!basic) return rejected("the OCSP response has no basic response");

  if (request) {
    // 0: both carry a nonce and they differ (a replayed response). A responder that ignores
    // nonces (most CAs' do, serving pre-signed responses) is fine.
    if (OCSP_check_nonce(const_cast<OCSP_REQUEST*>(request), basic.get()) == 0) {
      return rejected("the OCSP response nonce does not match the request");
    }
  }

  // The issuer is the only trust anchor: the signer is the issuer itself or a responder
  // certificate it issued for OCSP signing (OCSP_basic_verify checks the EKU of a delegate).
  tls::X509StorePtr store(X509_STORE_new());
  tls::X509StackPtr certs(sk_X509_new_null());
  if (!store || !certs || X509_STORE_add_cert(store.get(), issuer) != 1 ||
      X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN) != 1 ||
      X509_up_ref(issuer) != 1) {
    return rejected("cannot set up OCSP verification: " + tls::openssl_errors());
  }
  if (sk_X509_push(certs.get(), issuer) == 0) {
    X509_free(issuer);
    return rejected("cannot set up OCSP verification");
  }
  if (OCSP_basic_verify(basic.get(), certs.get(), store.get(), 0) != 1) {
    return rejected("OCSP response signature not trusted: " + tls::openssl_errors());
  }

  OcspCertIdPtr id(OCSP_cert_to_id(nullptr, cert, issuer));
  if (!id) return rejected("cannot build the OCSP CertID: " + tls::openssl_errors());
  int status = -1, reason = -1;
  ASN1_GENERALIZEDTIME *revoked_at = nullptr, *this_update = nullptr, *next_update = nullptr;
  if (OCSP_resp_find_status(basic.get(), id.get(), &status, &reason, &revoked_at, &this_update,
                            &next_update) != 1) {
    return rejected("the OCSP response has no status for this certificate");
  }
  OcspVerdict verdict;
  verdict.authentic = true;
  verdict.this_update = to_time_point(this_update);
  verdict.next_update = to_time_point(next_update);
  verdict.status = status == V_OCSP_CERTSTATUS_GOOD      ? OcspCertStatus::good
                   : status == V_OCSP_CERTSTATUS_REVOKED ? OcspCertStatus::revoked
                                                         : OcspCertStatus::unknown;
  if (!verdict.this_update) {
    verdict.error = "the OCSP response has no valid thisUpdate";
  } else if (*verdict.this_update > now + skew) {
    verdict.error = "the OCSP response's thisUpdate is in the future";
  } else if (verdict.next_update && *verdict.next_update + skew < now) {
    verdict.error = "the OCSP response is past its nextUpdate";
  } else if (verdict.next_update && *verdict.next_update < *verdict.this_update) {
    verdict.error = "the OCSP response's nextUpdate is before its thisUpdate";
  } else {
    verdict.current = true;
  }
  if (verdict.current && verdict.status != OcspCertStatus::good) {
    verdict.error =
        fmt::format("the OCSP responder says the certificate is {}", to_string(verdict.status));
  }
  verdict.usable = verdict.current && verdict.status == OcspCertStatus::good;
  ERR_clear_error();
  return verdict;
}

}  // namespace portcullis::revocation
