#include "portcullis/revocation/revocation_checker.hpp"

#include "portcullis/revocation/ocsp.hpp"

#include <spdlog/spdlog.h>

namespace portcullis::revocation {

namespace {

// "unknown_allowed:<reason>" for each reason the OCSP step can give: static text.
std::string_view allowed(std::string_view reason) noexcept {
  if (reason == ocsp_reason::unknown) return "unknown_allowed:ocsp_unknown";
  if (reason == ocsp_reason::unreachable) return "unknown_allowed:ocsp_unreachable";
  if (reason == ocsp_reason::bad_response) return "unknown_allowed:ocsp_bad_response";
  if (reason == ocsp_reason::no_responder) return "unknown_allowed:no_ocsp_responder";
  return "unknown_allowed:ocsp_unresolved";
}

}  // namespace

RevocationChecker::RevocationChecker(config::RevocationMode mode, bool ocsp_intermediates,
                                     std::shared_ptr<CrlChecker> crl,
                                     std::shared_ptr<OcspClient> ocsp)
    : mode_(mode),
      ocsp_intermediates_(ocsp_intermediates),
      crl_(std::move(crl)),
      ocsp_(std::move(ocsp)) {}

config::RevocationMode RevocationChecker::mode_for(X509* issuer) const noexcept {
  const auto* rule = crl_->rule_for(issuer);
  return rule && rule->mode ? *rule->mode : mode_;
}

std::string RevocationChecker::responder_for(X509* cert, X509* issuer) const {
  const auto* rule = crl_->rule_for(issuer);
  if (rule && !rule->ocsp_responder.empty()) return rule->ocsp_responder;
  return ocsp_responder_url(cert);
}

Verdict RevocationChecker::policy(X509* issuer, const IssuerRule* rule,
                                  std::string_view reason) const noexcept {
  const auto on_unknown = rule ? rule->on_unknown : crl_->on_unknown_for(issuer);
  if (on_unknown == config::OnUnknown::allow) return Verdict{Status::good, allowed(reason)};
  return Verdict{Status::unknown, reason};
}

Verdict RevocationChecker::ocsp_step(X509* cert, X509* issuer, const IssuerRule* rule, bool settled,
                                     bool crl_fallback) const noexcept {
  const auto cached = ocsp_->lookup(cert, issuer);
  std::string_view failure;
  switch (cached.kind) {
    case OcspLookup::Kind::good:
      return Verdict{Status::good, {}};
    case OcspLookup::Kind::revoked:
      return Verdict{Status::revoked, reason::revoked};
    case OcspLookup::Kind::unknown:
      return policy(issuer, rule, ocsp_reason::unknown);
    case OcspLookup::Kind::failed:
      failure = cached.reason;
      break;
    case OcspLookup::Kind::miss: {
      // Only on a miss is the AIA read (it allocates): a certificate with nowhere to ask is
      // decided now, without a query.
      bool has_responder = rule && !rule->ocsp_responder.empty();
      if (!has_responder) {
        try {
          has_responder = !ocsp_responder_url(cert).empty();
        } catch (...) {
          has_responder = false;
        }
      }
      if (!has_responder) {
        failure = ocsp_reason::no_responder;
      } else if (!settled) {
        return Verdict{Status::pending, "ocsp_pending"};
      } else {
        failure = ocsp_reason::unresolved;
      }
      break;
    }
  }
  if (crl_fallback) return crl_->check(cert, issuer);
  return policy(issuer, rule, failure);
}

Verdict RevocationChecker::decide(X509* cert, X509* issuer, bool settled) const noexcept {
  const auto* rule = crl_->rule_for(issuer);
  const auto mode = rule && rule->mode ? *rule->mode : mode_;
  const bool ocsp = ocsp_intermediates_ || X509_check_ca(cert) == 0;
  switch (mode) {
    case config::RevocationMode::none:
      return Verdict{Status::good, {}};
    case config::RevocationMode::crl:
      return crl_->check(cert, issuer);
    case config::RevocationMode::ocsp:
      return ocsp ? ocsp_step(cert, issuer, rule, settled, false) : Verdict{Status::good, {}};
    case config::RevocationMode::ocsp_then_crl:
      return ocsp ? ocsp_step(cert, issuer, rule, settled, true) : crl_->check(cert, issuer);
    case config::RevocationMode::crl_then_ocsp: {
      if (!ocsp) return crl_->check(cert, issuer);
      auto verdict = crl_->lookup(cert, issuer);
      if (verdict.status != Status::unknown) return verdict;
      return ocsp_step(cert, issuer, rule, settled, false);
    }
  }
  return Verdict{Status::unknown, "bad_mode"};
}

void RevocationChecker::resolve(const std::vector<CertPair>& pending,
                                std::function<void()> done) const {
  std::vector<OcspQuery> queries;
  for (const auto& [cert, issuer] : pending) {
    OcspQuery q;
    q.responder = responder_for(cert, issuer);
    if (q.responder.empty() || X509_up_ref(cert) != 1) continue;
    q.cert.reset(cert);
    if (X509_up_ref(issuer) != 1) continue;
    q.issuer.reset(issuer);
    queries.push_back(std::move(q));
  }
  ocsp_->resolve(std::move(queries), std::move(done));
}

}  // namespace portcullis::revocation
