#pragma once
// The Checker for configurations that use OCSP: per issuer (revocation.issuers[].mode, else
// revocation.mode) it asks the CRL index, the OCSP cache, or one then the other:
//   crl            the CRL index, as CrlChecker;
//   ocsp           the OCSP cache; a certificate with no cached status is pending (resolved after
//                  the handshake); no responder, or one that fails, goes to the policy;
//   ocsp_then_crl  OCSP first; when the responder is unreachable or answers badly, the CRL;
//   crl_then_ocsp  the CRL when one is usable for the issuer, else OCSP;
//   none           not checked.
// OCSP's "unknown" goes to the policy (on_unknown, per issuer) in every mode; revoked is always
// denied. CA certificates below the anchor are asked about with OCSP only when
// revocation.ocsp.check_intermediates is set; otherwise OCSP modes use the CRL step for them
// (or, in mode ocsp, leave them unchecked).
// Thread-safety: as Checker; the CrlChecker and OcspClient are shared with the refresher and
// the admin endpoints.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/checker.hpp"
#include "portcullis/revocation/crl_checker.hpp"
#include "portcullis/revocation/ocsp_client.hpp"

#include <memory>

namespace portcullis::revocation {

class RevocationChecker : public Checker {
 public:
  RevocationChecker(config::RevocationMode mode, bool ocsp_intermediates,
                    std::shared_ptr<CrlChecker> crl, std::shared_ptr<OcspClient> ocsp);

  Verdict check(X509* cert, X509* issuer) const noexcept override {
    return decide(cert, issuer, false);
  }
  Verdict check_settled(X509* cert, X509* issuer) const noexcept override {
    return decide(cert, issuer, true);
  }
  bool may_defer() const noexcept override { return true; }
  bool check_whole_chain() const noexcept override { return true; }
  std::uint64_t generation() const noexcept override {
    return crl_->generation() + ocsp_->generation();
  }
  void resolve(const std::vector<CertPair>& pending, std::function<void()> done) const override;

  // The mode that applies to certificates `issuer` issued.
  config::RevocationMode mode_for(X509* issuer) const noexcept;
  // The responder asked about `cert`: the issuer rule's, else the certificate's AIA; "" if none.
  std::string responder_for(X509* cert, X509* issuer) const;

 private:
  Verdict decide(X509* cert, X509* issuer, bool settled) const noexcept;
  Verdict ocsp_step(X509* cert, X509* issuer, const IssuerRule* rule, bool settled,
                    bool crl_fallback) const noexcept;
  Verdict policy(X509* issuer, const IssuerRule* rule, std::string_view reason) const noexcept;

  config::RevocationMode mode_;
  bool ocsp_intermediates_;
  std::shared_ptr<CrlChecker> crl_;
  std::shared_ptr<OcspClient> ocsp_;
};

}  // namespace portcullis::revocation
