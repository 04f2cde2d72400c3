#include "portcullis/revocation/checker_factory.hpp"

#include <stdexcept>
#include <string>

namespace portcullis::revocation {

std::shared_ptr<CrlChecker> make_checker(const config::Revocation& settings) {
  switch (settings.mode) {
    case config::RevocationMode::none:
      return nullptr;
    case config::RevocationMode::crl:
      return std::make_shared<CrlChecker>(settings.on_unknown, settings.crl.stale_grace);
    default:
      // Refusing to start is the only safe answer for a mode this build cannot enforce: running
      // without the checks the operator asked for would admit revoked clients.
      throw std::runtime_error(
          "revocation.mode: '" + std::string(config::to_string(settings.mode)) +
          "' is not supported by this version of portcullis; use 'crl' or 'none'");
  }
}

}  // namespace portcullis::revocation
