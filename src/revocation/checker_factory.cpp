#include "portcullis/revocation/checker_factory.hpp"

#include <stdexcept>
#include <string>

namespace portcullis::revocation {

std::shared_ptr<const Checker> make_checker(const config::Revocation& settings) {
  if (settings.mode == config::RevocationMode::none) return nullptr;
  // Refusing to start is the only safe answer for a mode this build cannot enforce: running
  // without the revocation checks the operator asked for would admit revoked clients.
  throw std::runtime_error("revocation.mode: '" + std::string(config::to_string(settings.mode)) +
                           "' is not supported by this build of portcullis; use 'none'");
}

}  // namespace portcullis::revocation
