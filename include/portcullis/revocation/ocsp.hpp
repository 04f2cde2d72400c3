#pragma once
// OCSP request building and response verification (RFC 6960) for one certificate and its
// issuer. Used by the stapler of the gateway's own certificate and by OcspClient for clients'.
// Thread-safety: free functions over their arguments; OcspRequest is not shared.

#include "portcullis/tls/openssl.hpp"

#include <openssl/ocsp.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace portcullis::revocation {

using OcspRequestPtr = std::unique_ptr<OCSP_REQUEST, tls::OpenSslDeleter<OCSP_REQUEST_free>>;
using OcspResponsePtr = std::unique_ptr<OCSP_RESPONSE, tls::OpenSslDeleter<OCSP_RESPONSE_free>>;
using OcspBasicPtr = std::unique_ptr<OCSP_BASICRESP, tls::OpenSslDeleter<OCSP_BASICRESP_free>>;
using OcspCertIdPtr = std::unique_ptr<OCSP_CERTID, tls::OpenSslDeleter<OCSP_CERTID_free>>;

// The first http:// OCSP responder URI of the certificate's Authority Information Access, or "".
std::string ocsp_responder_url(X509* cert);

struct OcspRequest {
  OcspRequestPtr request;
  std::string der;  // what is POSTed (application/ocsp-request)
};

// A request for `cert` issued by `issuer` (SHA-1 CertID, as responders expect), with a nonce
// when `nonce` is set. Throws tls::TlsError.
OcspRequest make_ocsp_request(X509* cert, X509* issuer, bool nonce);

enum class OcspCertStatus { good, revoked, unknown };

struct OcspVerdict {
  bool authentic = false;  // signed by the issuer or its delegate, for this CertID and nonce
  bool current = false;    // authentic, and thisUpdate/nextUpdate hold at `now` within the skew
  bool usable = false;     // current and good: may be stapled
  OcspCertStatus status = OcspCertStatus::unknown;
  std::string error;  // why it is not usable
  std::optional<std::chrono::system_clock::time_point> this_update, next_update;
};

// Verifies a DER OCSPResponse for `cert`: response status successful; signed by `issuer` or by
// a responder certificate `issuer` issued with id-kp-OCSPSigning; a single response for this
// CertID; thisUpdate/nextUpdate current within `skew` at `now`; and, with `request`, a nonce
// that matches when the response carries one. Usable only when all hold and the status is good.
OcspVerdict verify_ocsp_response(std::string_view der, X509* cert, X509* issuer,
                                 const OCSP_REQUEST* request,
                                 std::chrono::system_clock::time_point now,
                                 std::chrono::seconds skew);

const char* to_string(OcspCertStatus status);

}  // namespace portcullis::revocation
