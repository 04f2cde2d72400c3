#pragma once
// Builds the revocation checkers the TLS verify path calls, from the revocation settings.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/crl_checker.hpp"
#include "portcullis/revocation/ocsp_client.hpp"

#include <memory>

namespace portcullis::revocation {

struct Checkers {
  // Null when revocation is off (mode none everywhere). Holds the CRL index and the policy.
  std::shared_ptr<CrlChecker> crl;
  // Set when some issuer's mode asks OCSP, or differs from the global mode.
  std::shared_ptr<OcspClient> ocsp;
  // What the verify path calls: `crl` itself, or a RevocationChecker over both.
  std::shared_ptr<const Checker> checker;
};

// Whether any certificate is checked (revocation.mode, or an issuer rule's mode, is not none).
bool checks_revocation(const config::Revocation& settings);
// Whether a RevocationChecker (with an OcspClient) is needed rather than a plain CrlChecker.
bool needs_ocsp_client(const config::Revocation& settings);

// `clock` stands in for the system clock (check-cert --at).
Checkers make_checkers(const config::Revocation& settings, OcspClient::Clock clock = {});

}  // namespace portcullis::revocation
