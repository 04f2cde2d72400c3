#include "portcullis/authz/authorizer.hpp"

#include <boost/beast/core/string.hpp>

namespace portcullis::authz {

namespace {

bool same_char(char a, char b, bool ci) noexcept {
  if (!ci) return a == b;
  auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
  return lower(a) == lower(b);
}

bool any_san(const tls::PeerIdentity& id, tls::SanEntry::Type type, std::string_view pattern,
             bool ci) noexcept {
  for (const auto& san : id.sans) {
    if (san.type == type && glob_match(pattern, san.value, ci)) return true;
  }
  return false;
}

bool rule_matches(const config::AllowRule& rule, const tls::PeerIdentity& id) noexcept {
  for (const auto& [attribute, pattern] : rule.subject) {
    bool found = false;
    for (const auto& [name, value] : id.subject_attributes) {
      if (boost::beast::iequals(name, attribute) && glob_match(pattern, value)) {
        found = true;
        break;
      }
    }
    if (!found) return false;
  }
  using Type = tls::SanEntry::Type;
  if (!rule.issuer.empty() && !glob_match(rule.issuer, id.issuer)) return false;
  if (!rule.san_dns.empty() && !any_san(id, Type::dns, rule.san_dns, true)) return false;
  if (!rule.san_uri.empty() && !any_san(id, Type::uri, rule.san_uri, false)) return false;
  if (!rule.san_email.empty() && !any_san(id, Type::email, rule.san_email, true)) return false;
  if (!rule.san_ip.empty() && !any_san(id, Type::ip, rule.san_ip, false)) return false;
  if (!rule.fingerprint_sha256.empty() && rule.fingerprint_sha256 != id.fingerprint_sha256)
    return false;
  if (!rule.spki_sha256.empty() && rule.spki_sha256 != id.spki_sha256) return false;
  return true;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text, bool ci) noexcept {
  // Iterative matcher with single-star backtracking: linear in practice, no recursion.
  std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || same_char(pattern[p], text[t], ci))) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

Decision authorize(const config::Route& route, const tls::PeerIdentity& id) noexcept {
  if (!route.has_allow) return Decision{true, "any_verified_client", -1};
  for (std::size_t i = 0; i < route.allow.size(); ++i) {
    if (rule_matches(route.allow[i], id))
      return Decision{true, "rule_matched", static_cast<int>(i)};
  }
  return Decision{false, "no_rule_matched", -1};
}

}  // namespace portcullis::authz
