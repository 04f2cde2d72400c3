// libFuzzer target: OCSP response verification for one leaf and its issuer. The first input
// byte chooses how the rest is read:
// - raw: the bytes are the DER response. No input can carry a signature by this run's keys, so
//   none may ever be usable.
// - built: the bytes describe a response (status, signer, responder certificates, nonce, single
//   responses with their CertID, status and times), which is built and signed here. The verdict
//   must be exactly the one the description calls for: usable only when the response is
//   successful, signed by the issuer or by a responder certificate the issuer gave
//   id-kp-OCSPSigning, its first single response for the leaf says good, its times are current
//   and a nonce, when both sides carry one, matches.
// - corrupted: a built response with some bytes overwritten. It may still verify when the bytes
//   hit nothing signed, but it may be usable only if its description made the signed part good.

#include "portcullis/revocation/ocsp.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <fuzzer/FuzzedDataProvider.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace portcullis;
using SysClock = std::chrono::system_clock;

namespace {

constexpr std::chrono::seconds skew{300};

struct Pki {
  tls::Issued issuer, leaf, other_leaf, delegate, delegate_no_eku, impostor, impostor_delegate;
  SysClock::time_point now;
};

// Re-signs `cert` by `by` after adding id-kp-OCSPSigning.
void add_ocsp_signing(tls::Issued& cert, const tls::Issued& by) {
  EXTENDED_KEY_USAGE* eku = sk_ASN1_OBJECT_new_null();
  sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_OCSP_sign));
  X509_add1_ext_i2d(cert.cert.get(), NID_ext_key_usage, eku, 0, X509V3_ADD_REPLACE);
  sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
  if (X509_sign(cert.cert.get(), by.key.get(), EVP_sha256()) <= 0) std::abort();
}

const Pki& pki() {
  static const Pki p = [] {
    Pki out;
    tls::CertSpec ca;
    ca.common_name = "Fuzz Issuing CA";
    ca.is_ca = true;
    out.issuer = tls::issue_certificate(ca, nullptr);
    // Same subject name, different key: a response it signs must never pass for the issuer's.
    out.impostor = tls::issue_certificate(ca, nullptr);
    tls::CertSpec leaf;
    leaf.common_name = "client-1";
    out.leaf = tls::issue_certificate(leaf, &out.issuer);
    out.other_leaf = tls::issue_certificate(leaf, &out.issuer);
    tls::CertSpec responder;
    responder.common_name = "Fuzz OCSP responder";
    responder.eku = tls::Eku::none;
    out.delegate = tls::issue_certificate(responder, &out.issuer);
    add_ocsp_signing(out.delegate, out.issuer);
    out.delegate_no_eku = tls::issue_certificate(responder, &out.issuer);
    out.impostor_delegate = tls::issue_certificate(responder, &out.impostor);
    add_ocsp_signing(out.impostor_delegate, out.impostor);
    out.now = SysClock::from_time_t(SysClock::to_time_t(SysClock::now()));
    return out;
  }();
  return p;
}

using Asn1TimePtr = std::unique_ptr<ASN1_TIME, tls::OpenSslDeleter<ASN1_TIME_free>>;

struct Built {
  std::string der;
  bool signed_part_good = false;  // what the signed content and its signer call for
  bool usable = false;            // and the unsigned envelope too
};

std::string encode(OCSP_RESPONSE* response) {
  unsigned char* der = nullptr;
  const int len = i2d_OCSP_RESPONSE(response, &der);
  if (len <= 0) std::abort();
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return out;
}

Built build(FuzzedDataProvider& in, const revocation::OcspRequest& request, bool with_request) {
  const auto& p = pki();
  static constexpr int statuses[] = {
      OCSP_RESPONSE_STATUS_SUCCESSFUL,       OCSP_RESPONSE_STATUS_SUCCESSFUL,
      OCSP_RESPONSE_STATUS_MALFORMEDREQUEST, OCSP_RESPONSE_STATUS_INTERNALERROR,
      OCSP_RESPONSE_STATUS_TRYLATER,         OCSP_RESPONSE_STATUS_UNAUTHORIZED};
  const int response_status = in.PickValueInArray(statuses);
  enum Signer { issuer, delegate, delegate_no_eku, impostor, impostor_delegate };
  const auto signer = static_cast<Signer>(in.ConsumeIntegralInRange(0, 4));
  const bool include_signer = in.ConsumeBool();
  const bool by_key = in.ConsumeBool();
  const int nonce = in.ConsumeIntegralInRange(0, 2);  // none, the request's, another

  revocation::OcspBasicPtr basic(OCSP_BASICRESP_new());
  const int singles = in.ConsumeIntegralInRange(0, 3);
  bool first_for_leaf_good = false, seen_leaf = false, foreign_issuer = false;
  const auto now = SysClock::to_time_t(p.now);
  for (int i = 0; i < singles; ++i) {
    const int which = in.ConsumeIntegralInRange(0, 3);
    const X509* subject = which == 1 ? p.other_leaf.cert.get() : p.leaf.cert.get();
    const X509* by = which == 2 ? p.impostor.cert.get() : p.issuer.cert.get();
    const EVP_MD* md = which == 3 ? EVP_sha256() : EVP_sha1();
    foreign_issuer = foreign_issuer || which == 2;
    revocation::OcspCertIdPtr id(OCSP_cert_to_id(md, subject, by));
    static constexpr int cert_statuses[] = {V_OCSP_CERTSTATUS_GOOD, V_OCSP_CERTSTATUS_REVOKED,
                                            V_OCSP_CERTSTATUS_UNKNOWN};
    const int status = in.PickValueInArray(cert_statuses);
    const long this_offset = in.ConsumeIntegralInRange<long>(-864000, 864000);
    const bool has_next = in.ConsumeBool();
    const long next_offset = in.ConsumeIntegralInRange<long>(-864000, 864000);
    Asn1TimePtr this_update(ASN1_GENERALIZEDTIME_adj(nullptr, now, 0, this_offset));
    Asn1TimePtr next_update(has_next ? ASN1_GENERALIZEDTIME_adj(nullptr, now, 0, next_offset)
                                     : nullptr);
    Asn1TimePtr revoked_at(ASN1_GENERALIZEDTIME_adj(nullptr, now, 0, -86400));
    if (!OCSP_basic_add1_status(basic.get(), id.get(), status, OCSP_REVOKED_STATUS_KEYCOMPROMISE,
                                status == V_OCSP_CERTSTATUS_REVOKED ? revoked_at.get() : nullptr,
                                this_update.get(), next_update.get()))
      std::abort();
    if (which == 0 && !seen_leaf) {
      seen_leaf = true;
      const bool current =
          this_offset <= skew.count() &&
          (!has_next || (next_offset + skew.count() >= 0 && next_offset >= this_offset));
      first_for_leaf_good = status == V_OCSP_CERTSTATUS_GOOD && current;
    }
  }
  if (nonce == 1) OCSP_copy_nonce(basic.get(), request.request.get());
  if (nonce == 2) OCSP_basic_add1_nonce(basic.get(), nullptr, 16);

  const tls::Issued* signing[] = {&p.issuer, &p.delegate, &p.delegate_no_eku, &p.impostor,
                                  &p.impostor_delegate};
  const auto& by = *signing[signer];
  unsigned long flags = include_signer ? 0 : OCSP_NOCERTS;
  if (by_key) flags |= OCSP_RESPID_KEY;
  if (!OCSP_basic_sign(basic.get(), by.cert.get(), by.key.get(), EVP_sha256(), nullptr, flags))
    std::abort();
  revocation::OcspResponsePtr response(OCSP_response_create(response_status, basic.get()));

  Built out;
  out.der = encode(response.get());
  // OpenSSL accepts a signer only for responses whose every CertID names the issuer it is
  // or that issued it: one single response about another CA's certificate voids them all.
  const bool trusted_signer =
      (signer == issuer || (signer == delegate && include_signer)) && !foreign_issuer;
  // A response's nonce is only compared with the request's when a request is given.
  out.signed_part_good = trusted_signer && first_for_leaf_good && !(nonce == 2 && with_request);
  out.usable = out.signed_part_good && response_status == OCSP_RESPONSE_STATUS_SUCCESSFUL;
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const auto& p = pki();
  const int mode = data[0] % 3;
  FuzzedDataProvider in(data + 1, size - 1);
  const bool with_request = in.ConsumeBool();
  const auto request = revocation::make_ocsp_request(p.leaf.cert.get(), p.issuer.cert.get(), true);
  const OCSP_REQUEST* sent = with_request ? request.request.get() : nullptr;
  const auto verify = [&](const std::string& der) {
    return revocation::verify_ocsp_response(der, p.leaf.cert.get(), p.issuer.cert.get(), sent,
                                            p.now, skew);
  };

  if (mode == 0) {
    const auto verdict = verify(in.ConsumeRemainingBytesAsString());
    if (verdict.usable) std::abort();
  } else {
    auto built = build(in, request, with_request);
    if (mode == 1) {
      const auto verdict = verify(built.der);
      if (verdict.usable != built.usable) {
        std::fprintf(stderr, "usable=%d, expected %d; error: %s\n", verdict.usable, built.usable,
                     verdict.error.c_str());
        std::abort();
      }
      if (verdict.usable &&
          (verdict.status != revocation::OcspCertStatus::good || !verdict.error.empty()))
        std::abort();
      if (!verdict.usable && verdict.error.empty()) std::abort();
    } else {
      const int edits = in.ConsumeIntegralInRange(1, 4);
      for (int i = 0; i < edits && !built.der.empty(); ++i) {
        const auto at = in.ConsumeIntegralInRange<std::size_t>(0, built.der.size() - 1);
        built.der[at] = static_cast<char>(in.ConsumeIntegral<std::uint8_t>());
      }
      const auto verdict = verify(built.der);
      if (verdict.usable && !built.signed_part_good) std::abort();
    }
  }
  ERR_clear_error();
  return 0;
}
