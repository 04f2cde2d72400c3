#pragma once
// Per-route authorization on the verified client identity: a pure function.
// Thread-safety: stateless.

#include "portcullis/config/config.hpp"
#include "portcullis/tls/peer_identity.hpp"

#include <string>
#include <string_view>

namespace portcullis::authz {

struct Decision {
  bool allowed = false;
  std::string reason;  // "any_verified_client", "rule_matched", or on deny "no_rule_matched"
  int rule = -1;       // index of the matching rule
};

// Without `allow` rules every verified client is admitted; otherwise a client is admitted when
// any rule matches, and a rule matches when every field it sets matches. SAN rules compare only
// SANs of their own type: a URI SAN never satisfies a DNS rule.
Decision authorize(const config::Route& route, const tls::PeerIdentity& id) noexcept;

// '*' matches any run of characters (including none), '?' exactly one. `case_insensitive` for
// DNS names and attribute values that compare that way.
bool glob_match(std::string_view pattern, std::string_view text,
                bool case_insensitive = false) noexcept;

}  // namespace portcullis::authz
