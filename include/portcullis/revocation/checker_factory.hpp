#pragma once
// Builds the revocation checker the TLS verify path calls, from the revocation settings.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/crl_checker.hpp"

#include <memory>

namespace portcullis::revocation {

// Null when revocation is off (mode none). Throws std::runtime_error for modes this version
// cannot enforce, so the gateway refuses to start rather than run without the checks asked for.
std::shared_ptr<CrlChecker> make_checker(const config::Revocation& settings);

}  // namespace portcullis::revocation
