#pragma once
// The identity headers each preset injects, and the test that recognises any spelling of them.
// Thread-safety: stateless.

#include "portcullis/config/config.hpp"
#include "portcullis/tls/peer_identity.hpp"

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portcullis::tls {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// The headers to inject for `preset`, computed once per connection.
HeaderList identity_headers(config::IdentityPreset preset, const PeerIdentity& id);

// True for any name an identity preset uses, compared case-insensitively with '_' taken as '-':
// every "X-Client-Cert-*" and "X-Amzn-Mtls-Clientcert*" name, "Client-Cert",
// "Client-Cert-Chain" and "X-Forwarded-Client-Cert". Allocation-free.
bool is_identity_header(std::string_view name) noexcept;

}  // namespace portcullis::tls
