#include "portcullis/revocation/checker_factory.hpp"

#include "portcullis/revocation/revocation_checker.hpp"

#include <algorithm>

namespace portcullis::revocation {

bool checks_revocation(const config::Revocation& settings) {
  const auto checks = [](config::RevocationMode m) { return m != config::RevocationMode::none; };
  return checks(settings.mode) ||
         std::any_of(settings.issuers.begin(), settings.issuers.end(),
                     [&](const auto& p) { return p.mode && checks(*p.mode); });
}

bool needs_ocsp_client(const config::Revocation& settings) {
  const auto& issuers = settings.issuers;
  return checks_revocation(settings) &&
         (settings.mode != config::RevocationMode::crl ||
          std::any_of(issuers.begin(), issuers.end(), [](const auto& p) { return p.mode; }));
}

Checkers make_checkers(const config::Revocation& settings, OcspClient::Clock clock) {
  Checkers out;
  if (!checks_revocation(settings)) return out;
  out.crl = std::make_shared<CrlChecker>(settings.on_unknown, settings.crl.stale_grace, clock);
  out.checker = out.crl;
  if (!needs_ocsp_client(settings)) return out;
  out.ocsp = std::make_shared<OcspClient>(settings.ocsp, std::move(clock));
  out.checker = std::make_shared<RevocationChecker>(
      settings.mode, settings.ocsp.check_intermediates, out.crl, out.ocsp);
  return out;
}

}  // namespace portcullis::revocation
