#include "portcullis/config/config.hpp"

#include <yaml-cpp/yaml.h>

#include <fmt/format.h>

#include <unistd.h>
#include <algorithm>
#include <charconv>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>

namespace portcullis::config {

namespace fs = std::filesystem;

std::string HostPort::to_string() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

std::string Diagnostic::to_string() const {
  std::string out = file;
  if (line > 0) out += fmt::format(":{}", line);
  out += ": ";
  if (!key.empty()) out += key + ": ";
  return out + message;
}

int Config::line_of(std::string_view key) const {
  // "listeners[0].tls.groups" → itself, else "listeners[0].tls", "listeners[0]", "listeners".
  for (std::string k(key); !k.empty();) {
    if (const auto it = key_lines.find(k); it != key_lines.end()) return it->second;
    const auto cut = k.find_last_of(".[");
    if (cut == std::string::npos) break;
    k.resize(cut);
  }
  return 0;
}

namespace {

std::string join_diagnostics(const std::vector<Diagnostic>& errors) {
  std::string out;
  for (const auto& e : errors) {
    if (!out.empty()) out += "\n";
    out += e.to_string();
  }
  return out;
}

}  // namespace

ConfigError::ConfigError(std::vector<Diagnostic> errors)
    : std::runtime_error(join_diagnostics(errors)), errors_(std::move(errors)) {}

std::string_view to_string(IdentityPreset preset) {
  switch (preset) {
    case IdentityPreset::standard:
      return "default";
    case IdentityPreset::rfc9440:
      return "rfc9440";
    case IdentityPreset::xfcc:
      return "xfcc";
    case IdentityPreset::aws_alb:
      return "aws-alb";
  }
  return "default";
}

std::string_view to_string(RevocationMode mode) {
  switch (mode) {
    case RevocationMode::none:
      return "none";
    case RevocationMode::crl:
      return "crl";
    case RevocationMode::ocsp:
      return "ocsp";
    case RevocationMode::ocsp_then_crl:
      return "ocsp_then_crl";
    case RevocationMode::crl_then_ocsp:
      return "crl_then_ocsp";
  }
  return "none";
}

Duration parse_duration(std::string_view text) {
  const auto digits_end =
      std::find_if(text.begin(), text.end(), [](char c) { return c < '0' || c > '9'; });
  const auto digits = text.substr(0, static_cast<std::size_t>(digits_end - text.begin()));
  const auto unit = text.substr(digits.size());
  if (digits.empty()) {
    throw std::invalid_argument(fmt::format(
        "'{}' is not a duration: use an integer and a unit (ms, s, m, h, d), e.g. 30s", text));
  }
  if (unit.empty()) {
    throw std::invalid_argument(
        fmt::format("'{}' needs a unit (ms, s, m, h, d), e.g. {}s", text, digits));
  }
  std::uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc{} || value > 1'000'000'000ULL) {
    throw std::invalid_argument(fmt::format("'{}' is out of range", text));
  }
  const std::pair<std::string_view, std::uint64_t> units[] = {
      {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}};
  for (const auto& [name, factor] : units) {
    if (unit == name) return Duration(static_cast<Duration::rep>(value * factor));
  }
  throw std::invalid_argument(
      fmt::format("'{}' has an unknown unit '{}': use ms, s, m, h or d", text, unit));
}

std::uint64_t parse_size(std::string_view text) {
  const auto digits_end =
      std::find_if(text.begin(), text.end(), [](char c) { return c < '0' || c > '9'; });
  const auto digits = text.substr(0, static_cast<std::size_t>(digits_end - text.begin()));
  const auto unit = text.substr(digits.size());
  if (digits.empty()) {
    throw std::invalid_argument(fmt::format(
        "'{}' is not a size: use bytes or an integer with B, KiB, MiB, GiB, kB, MB, GB", text));
  }
  std::uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc{}) throw std::invalid_argument(fmt::format("'{}' is out of range", text));
  const std::pair<std::string_view, std::uint64_t> units[] = {{"", 1},
                                                              {"B", 1},
                                                              {"KiB", 1ULL << 10},
                                                              {"MiB", 1ULL << 20},
                                                              {"GiB", 1ULL << 30},
                                                              {"TiB", 1ULL << 40},
                                                              {"kB", 1000ULL},
                                                              {"KB", 1000ULL},
                                                              {"MB", 1000'000ULL},
                                                              {"GB", 1000'000'000ULL}};
  for (const auto& [name, factor] : units) {
    if (unit == name) {
      if (value > UINT64_MAX / factor)
        throw std::invalid_argument(fmt::format("'{}' is out of range", text));
      return value * factor;
    }
  }
  throw std::invalid_argument(
      fmt::format("'{}' has an unknown unit '{}': use B, KiB, MiB, GiB, kB, MB or GB", text, unit));
}

namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const auto above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// Walks the YAML tree, collecting every error with its line and key path.
class Loader {
 public:
  Loader(std::string file_label, fs::path base_dir)
      : file_(std::move(file_label)), base_(std::move(base_dir)) {}

  std::vector<Diagnostic> errors;
  std::vector<Diagnostic> warnings;
  std::map<std::string, int> key_lines;

  void error(const YAML::Node& node, const std::string& key, std::string message) {
    errors.push_back(Diagnostic{file_, line_of(node), key, std::move(message)});
  }
  void warn(const YAML::Node& node, const std::string& key, std::string message) {
    warnings.push_back(Diagnostic{file_, line_of(node), key, std::move(message)});
  }
  int line_of(const YAML::Node& node) const {
    if (!node.IsDefined()) return 0;
    const auto mark = node.Mark();
    return mark.line >= 0 ? mark.line + 1 : 0;
  }
  const std::string& file() const { return file_; }

  // Checks that `node` is a map and has only `allowed` keys.
  bool map(const YAML::Node& node, const std::string& path,
           std::initializer_list<std::string_view> allowed) {
    if (!node.IsMap()) {
      error(node, path, "expected a map of keys");
      return false;
    }
    std::map<std::string, int> seen;
    for (const auto& entry : node) {
      const auto key = entry.first.as<std::string>("");
      const auto where = path.empty() ? key : path + "." + key;
      // YAML parsers keep one of two equal keys, silently: a duplicate is an error.
      if (const auto [first, fresh] = seen.emplace(key, line_of(entry.first)); !fresh) {
        error(entry.first, where,
              fmt::format("duplicate key '{}' (first written on line {})", key, first->second));
        continue;
      }
      key_lines[where] = line_of(entry.first);
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      std::string suggestion;
      for (auto candidate : allowed) {
        if (edit_distance(key, candidate) <= 2) {
          suggestion = fmt::format(" (did you mean '{}'?)", candidate);
          break;
        }
      }
      std::string valid;
      for (auto candidate : allowed) valid += (valid.empty() ? "" : ", ") + std::string(candidate);
      error(entry.first, where,
            fmt::format("unknown key '{}'{}; valid keys here: {}", key, suggestion, valid));
    }
    return true;
  }

  std::string join(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }

  std::optional<std::string> scalar(const YAML::Node& parent, const std::string& path,
                                    std::string_view key, bool required) {
    const auto node = parent[std::string(key)];
    if (!node.IsDefined() || node.IsNull()) {
      if (required) error(parent, join(path, key), "required key is missing");
      return std::nullopt;
    }
    if (!node.IsScalar()) {
      error(node, join(path, key), "expected a single value");
      return std::nullopt;
    }
    return node.Scalar();
  }

  void string(const YAML::Node& parent, const std::string& path, std::string_view key,
              std::string& out, bool required = false) {
    if (auto v = scalar(parent, path, key, required)) {
      if (v->empty() && required) {
        error(parent[std::string(key)], join(path, key), "must not be empty");
        return;
      }
      out = *v;
    }
  }

  void integer(const YAML::Node& parent, const std::string& path, std::string_view key, int& out,
               int min, int max) {
    if (auto v = scalar(parent, path, key, false)) {
      int value = 0;
      const auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), value);
      if (ec != std::errc{} || ptr != v->data() + v->size() || value < min || value > max) {
        error(parent[std::string(key)], join(path, key),
              fmt::format("expected an integer from {} to {}, got '{}'", min, max, *v));
        return;
      }
      out = value;
    }
  }

  void boolean(const YAML::Node& parent, const std::string& path, std::string_view key, bool& out) {
    if (auto v = scalar(parent, path, key, false)) {
      if (*v == "true" || *v == "yes" || *v == "on") {
        out = true;
      } else if (*v == "false" || *v == "no" || *v == "off") {
        out = false;
      } else {
        error(parent[std::string(key)], join(path, key),
              fmt::format("expected true or false, got '{}'", *v));
      }
    }
  }

  // `zero_allowed` for durations where 0 means "off".
  void duration(const YAML::Node& parent, const std::string& path, std::string_view key,
                Duration& out, bool zero_allowed = false) {
    if (auto v = scalar(parent, path, key, false)) {
      try {
        out = parse_duration(*v);
        if (out.count() < 0 || (out.count() == 0 && !zero_allowed))
          error(parent[std::string(key)], join(path, key), "must be greater than zero");
      } catch (const std::invalid_argument& e) {
        error(parent[std::string(key)], join(path, key), e.what());
      }
    }
  }

  void size(const YAML::Node& parent, const std::string& path, std::string_view key,
            std::uint64_t& out) {
    if (auto v = scalar(parent, path, key, false)) {
      try {
        out = parse_size(*v);
        if (out == 0) error(parent[std::string(key)], join(path, key), "must be greater than zero");
      } catch (const std::invalid_argument& e) {
        error(parent[std::string(key)], join(path, key), e.what());
      }
    }
  }

  template <typename Enum>
  void choice(const YAML::Node& parent, const std::string& path, std::string_view key, Enum& out,
              std::initializer_list<std::pair<std::string_view, Enum>> options) {
    if (auto v = scalar(parent, path, key, false)) {
      for (const auto& [name, value] : options) {
        if (*v == name) {
          out = value;
          return;
        }
      }
      std::string valid;
      for (const auto& [name, value] : options)
        valid += (valid.empty() ? "" : ", ") + std::string(name);
      error(parent[std::string(key)], join(path, key),
            fmt::format("'{}' is not one of: {}", *v, valid));
    }
  }

  // A path relative to the config file's directory; optionally it must be a readable file.
  void path(const YAML::Node& parent, const std::string& p, std::string_view key, fs::path& out,
            bool required, bool must_exist) {
    if (auto v = scalar(parent, p, key, required)) {
      if (v->empty()) {
        // An empty string means "not set", never the config file's directory.
        if (required) error(parent[std::string(key)], join(p, key), "must not be empty");
        return;
      }
      out = fs::path(*v).is_absolute() ? fs::path(*v) : (base_ / *v).lexically_normal();
      if (!must_exist) return;
      std::error_code ec;
      if (!fs::exists(out, ec)) {
        error(parent[std::string(key)], join(p, key),
              fmt::format("file not found: {}", out.string()));
      } else if (fs::is_directory(out, ec)) {
        error(parent[std::string(key)], join(p, key),
              fmt::format("is a directory, not a file: {}", out.string()));
      } else if (::access(out.c_str(), R_OK) != 0) {
        error(parent[std::string(key)], join(p, key),
              fmt::format("file not readable: {}", out.string()));
      }
    }
  }

  void host_port(const YAML::Node& parent, const std::string& p, std::string_view key,
                 HostPort& out, bool required) {
    if (auto v = scalar(parent, p, key, required))
      parse_host_port(parent[std::string(key)], join(p, key), *v, out);
  }

  bool parse_host_port(const YAML::Node& node, const std::string& p, std::string_view text,
                       HostPort& out) {
    std::string_view host, port;
    if (!text.empty() && text.front() == '[') {
      const auto close = text.find(']');
      if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
        error(node, p, fmt::format("'{}' is not host:port (IPv6 as [::1]:8443)", text));
        return false;
      }
      host = text.substr(1, close - 1);
      port = text.substr(close + 2);
    } else {
      const auto colon = text.rfind(':');
      if (colon == std::string_view::npos || text.find(':') != colon) {
        error(node, p, fmt::format("'{}' is not host:port (IPv6 as [::1]:8443)", text));
        return false;
      }
      host = text.substr(0, colon);
      port = text.substr(colon + 1);
    }
    unsigned value = 0;
    const auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (host.empty() || port.empty() || ec != std::errc{} || ptr != port.data() + port.size() ||
        value > 65535) {
      error(node, p, fmt::format("'{}' is not host:port with a port from 0 to 65535", text));
      return false;
    }
    out.host = std::string(host);
    out.port = static_cast<std::uint16_t>(value);
    return true;
  }

 private:
  std::string file_;
  fs::path base_;
};

void load_allow_rule(Loader& l, const YAML::Node& node, const std::string& p, AllowRule& rule) {
  if (!l.map(node, p,
             {"subject", "issuer", "san_dns", "san_uri", "san_email", "san_ip",
              "fingerprint_sha256", "spki_sha256"})) {
    return;
  }
  rule.line = l.line_of(node);
  if (const auto subject = node["subject"]; subject.IsDefined()) {
    if (!subject.IsMap() || subject.size() == 0) {
      l.error(subject, p + ".subject",
              "expected a map of attribute to pattern, e.g. { CN: \"client-*\" }");
    } else {
      for (const auto& entry : subject) {
        if (!entry.second.IsScalar()) {
          l.error(entry.second, p + ".subject." + entry.first.Scalar(), "expected a pattern");
          continue;
        }
        rule.subject.emplace_back(entry.first.Scalar(), entry.second.Scalar());
      }
    }
  }
  l.string(node, p, "issuer", rule.issuer);
  l.string(node, p, "san_dns", rule.san_dns);
  l.string(node, p, "san_uri", rule.san_uri);
  l.string(node, p, "san_email", rule.san_email);
  l.string(node, p, "san_ip", rule.san_ip);
  for (auto [key, field] :
       {std::pair<std::string_view, std::string*>{"fingerprint_sha256", &rule.fingerprint_sha256},
        {"spki_sha256", &rule.spki_sha256}}) {
    std::string raw;
    l.string(node, p, key, raw);
    if (raw.empty()) continue;
    std::string hex;
    for (char c : raw) {
      if (c == ':') continue;
      hex += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      l.error(node[std::string(key)], p + "." + std::string(key),
              "expected 64 hex digits (a SHA-256 digest)");
      continue;
    }
    *field = hex;
  }
  if (rule.subject.empty() && rule.issuer.empty() && rule.san_dns.empty() && rule.san_uri.empty() &&
      rule.san_email.empty() && rule.san_ip.empty() && rule.fingerprint_sha256.empty() &&
      rule.spki_sha256.empty() && node.size() == 0) {
    l.error(node, p,
            "a rule needs at least one of subject, issuer, san_*, fingerprint_sha256, spki_sha256");
  }
}

void load_route(Loader& l, const YAML::Node& node, const std::string& p, Route& route) {
  if (!l.map(node, p, {"match", "upstream", "allow", "max_body_size"})) return;
  if (const auto match = node["match"]; match.IsDefined()) {
    if (l.map(match, p + ".match", {"host", "path_prefix"})) {
      l.string(match, p + ".match", "host", route.match.host);
      l.string(match, p + ".match", "path_prefix", route.match.path_prefix);
      if (route.match.path_prefix.empty() || route.match.path_prefix.front() != '/') {
        l.error(match["path_prefix"], p + ".match.path_prefix",
                fmt::format("'{}' must start with /", route.match.path_prefix));
      }
      if (route.match.host.empty()) l.error(match["host"], p + ".match.host", "must not be empty");
    }
  }
  l.string(node, p, "upstream", route.upstream, true);
  l.size(node, p, "max_body_size", route.max_body_bytes);
  if (const auto allow = node["allow"]; allow.IsDefined()) {
    route.has_allow = true;
    if (!allow.IsSequence()) {
      l.error(allow, p + ".allow", "expected a list of rules");
    } else if (allow.size() == 0) {
      l.error(allow, p + ".allow",
              "empty list admits nobody; remove the key to admit every verified client");
    } else {
      for (std::size_t i = 0; i < allow.size(); ++i) {
        AllowRule rule;
        load_allow_rule(l, allow[i], fmt::format("{}.allow[{}]", p, i), rule);
        route.allow.push_back(std::move(rule));
      }
    }
  }
}

// An OCSP responder URL: http:// only (answers are signed; https would add nothing but a
// certificate chain of its own to trust).
void ocsp_responder(Loader& l, const YAML::Node& node, const std::string& path, const char* key,
                    std::string& out) {
  l.string(node, path, key, out);
  if (!out.empty() && out.rfind("http://", 0) != 0) {
    l.error(node[key], path + "." + key,
            fmt::format("'{}' is not an http:// URL (OCSP is asked over plain HTTP; answers are "
                        "signed)",
                        out));
  }
}

void load_ocsp_stapling(Loader& l, const YAML::Node& tls, const std::string& t, OcspStapling& out) {
  const auto node = tls["ocsp_stapling"];
  const auto o = t + ".ocsp_stapling";
  if (!node.IsDefined() || node.IsNull() ||
      !l.map(node, o, {"enabled", "responder", "refresh", "file", "fetch_timeout"})) {
    return;
  }
  l.boolean(node, o, "enabled", out.enabled);
  ocsp_responder(l, node, o, "responder", out.responder);
  l.duration(node, o, "refresh", out.refresh);
  l.path(node, o, "file", out.file, false, true);
  l.duration(node, o, "fetch_timeout", out.fetch_timeout);
  if (!out.file.empty() && !out.responder.empty()) {
    l.error(node["file"], o + ".file", "set either file or responder, not both");
  }
}

void load_listener(Loader& l, const YAML::Node& node, const std::string& p, Listener& listener) {
  if (!l.map(node, p,
             {"name", "address", "tls", "client_auth", "identity_headers", "routes",
              "header_timeout", "idle_timeout", "max_header_size", "max_connections"})) {
    return;
  }
  l.string(node, p, "name", listener.name, true);
  l.host_port(node, p, "address", listener.address, true);

  const auto tls = node["tls"];
  if (!tls.IsDefined()) {
    l.error(node, p + ".tls", "required key is missing");
  } else if (l.map(tls, p + ".tls",
                   {"certificate", "private_key", "min_version", "groups", "ciphers",
                    "ciphersuites", "handshake_timeout", "session_tickets", "session_ticket_keys",
                    "session_lifetime", "session_cache_size", "ocsp_stapling"})) {
    const auto t = p + ".tls";
    l.path(tls, t, "certificate", listener.tls.certificate, true, true);
    l.path(tls, t, "private_key", listener.tls.private_key, true, true);
    if (auto v = l.scalar(tls, t, "min_version", false)) {
      if (*v == "1.2" || *v == "1.3") {
        listener.tls.min_version = *v;
      } else {
        l.error(tls["min_version"], t + ".min_version",
                fmt::format("'{}' is not one of: \"1.2\", \"1.3\"", *v));
      }
    }
    if (const auto groups = tls["groups"]; groups.IsDefined()) {
      if (!groups.IsSequence()) {
        l.error(groups, t + ".groups", "expected a list of group names, e.g. [X25519, P-256]");
      } else {
        for (const auto& g : groups) listener.tls.groups.push_back(g.as<std::string>(""));
      }
    }
    l.string(tls, t, "ciphers", listener.tls.ciphers);
    l.string(tls, t, "ciphersuites", listener.tls.ciphersuites);
    l.duration(tls, t, "handshake_timeout", listener.tls.handshake_timeout);
    if (tls["session_tickets"].IsDefined()) {
      bool tickets = true;
      l.boolean(tls, t, "session_tickets", tickets);
      listener.tls.session_tickets = tickets;
    }
    l.path(tls, t, "session_ticket_keys", listener.tls.session_ticket_keys, false, true);
    l.duration(tls, t, "session_lifetime", listener.tls.session_lifetime);
    l.integer(tls, t, "session_cache_size", listener.tls.session_cache_size, 0, 10'000'000);
    load_ocsp_stapling(l, tls, t, listener.tls.ocsp_stapling);
  }

  const auto auth = node["client_auth"];
  if (!auth.IsDefined()) {
    l.error(node, p + ".client_auth",
            "required key is missing: client certificates are always verified");
  } else if (l.map(auth, p + ".client_auth",
                   {"truststore", "max_chain_depth", "send_ca_names", "chain_cache_size"})) {
    const auto a = p + ".client_auth";
    l.path(auth, a, "truststore", listener.client_auth.truststore, true, true);
    l.integer(auth, a, "max_chain_depth", listener.client_auth.max_chain_depth, 1, 16);
    l.boolean(auth, a, "send_ca_names", listener.client_auth.send_ca_names);
    l.integer(auth, a, "chain_cache_size", listener.client_auth.chain_cache_size, 0, 10'000'000);
  }

  l.choice(node, p, "identity_headers", listener.identity_headers,
           {{"default", IdentityPreset::standard},
            {"rfc9440", IdentityPreset::rfc9440},
            {"xfcc", IdentityPreset::xfcc},
            {"aws-alb", IdentityPreset::aws_alb}});
  l.duration(node, p, "header_timeout", listener.header_timeout);
  l.duration(node, p, "idle_timeout", listener.idle_timeout);
  l.size(node, p, "max_header_size", listener.max_header_bytes);
  l.integer(node, p, "max_connections", listener.max_connections, 1, 10'000'000);

  const auto routes = node["routes"];
  if (!routes.IsDefined()) {
    l.error(node, p + ".routes", "required key is missing");
  } else if (!routes.IsSequence() || routes.size() == 0) {
    l.error(routes, p + ".routes", "expected a non-empty list of routes");
  } else {
    for (std::size_t i = 0; i < routes.size(); ++i) {
      Route route;
      load_route(l, routes[i], fmt::format("{}.routes[{}]", p, i), route);
      listener.routes.push_back(std::move(route));
    }
  }
}

void load_upstream(Loader& l, const YAML::Node& node, const std::string& p, Upstream& upstream) {
  if (!l.map(node, p,
             {"endpoints", "balance", "connect_timeout", "response_timeout", "idle_timeout",
              "max_idle_connections", "health", "resolve_interval", "retry", "tls"})) {
    return;
  }
  const auto endpoints = node["endpoints"];
  if (!endpoints.IsDefined()) {
    l.error(node, p + ".endpoints", "required key is missing");
  } else if (!endpoints.IsSequence() || endpoints.size() == 0) {
    l.error(endpoints, p + ".endpoints", "expected a non-empty list of host:port");
  } else {
    for (std::size_t i = 0; i < endpoints.size(); ++i) {
      HostPort hp;
      const auto key = fmt::format("{}.endpoints[{}]", p, i);
      if (!endpoints[i].IsScalar()) {
        l.error(endpoints[i], key, "expected host:port");
      } else if (l.parse_host_port(endpoints[i], key, endpoints[i].Scalar(), hp)) {
        if (hp.port == 0) l.error(endpoints[i], key, "port 0 is not a valid upstream port");
        upstream.endpoints.push_back(hp);
      }
    }
  }
  l.duration(node, p, "connect_timeout", upstream.connect_timeout);
  l.duration(node, p, "response_timeout", upstream.response_timeout);
  l.duration(node, p, "idle_timeout", upstream.idle_timeout);
  l.integer(node, p, "max_idle_connections", upstream.max_idle_connections, 0, 100000);
  l.choice(
      node, p, "balance", upstream.balance,
      {{"round_robin", Balance::round_robin}, {"least_outstanding", Balance::least_outstanding}});
  if (const auto health = node["health"]; health.IsDefined()) {
    const auto h = p + ".health";
    if (l.map(health, h, {"max_failures", "ejection_time"})) {
      l.integer(health, h, "max_failures", upstream.max_failures, 0, 1000);
      l.duration(health, h, "ejection_time", upstream.ejection_time);
    }
  }
  l.duration(node, p, "resolve_interval", upstream.resolve_interval);
  l.boolean(node, p, "retry", upstream.retry);
  if (const auto tls = node["tls"]; tls.IsDefined() && !tls.IsNull()) {
    const auto t = p + ".tls";
    if (l.map(tls, t, {"ca", "server_name", "certificate", "private_key"})) {
      UpstreamTls out;
      l.path(tls, t, "ca", out.ca, true, true);
      l.string(tls, t, "server_name", out.server_name);
      l.path(tls, t, "certificate", out.certificate, false, true);
      l.path(tls, t, "private_key", out.private_key, false, true);
      if (out.certificate.empty() != out.private_key.empty()) {
        l.error(tls, t, "certificate and private_key go together");
      }
      upstream.tls = std::move(out);
    }
  }
}

// Attribute types are case-insensitive (RFC 4514 §3); rewrites `type` in the spelling OpenSSL
// knows. False when it is neither a known name nor a dotted OID.
bool canonical_attribute_type(std::string& type) {
  static constexpr std::string_view known[] = {"CN",
                                               "C",
                                               "L",
                                               "ST",
                                               "O",
                                               "OU",
                                               "STREET",
                                               "DC",
                                               "UID",
                                               "SN",
                                               "GN",
                                               "serialNumber",
                                               "emailAddress",
                                               "title",
                                               "initials",
                                               "pseudonym",
                                               "generationQualifier",
                                               "dnQualifier",
                                               "name",
                                               "description",
                                               "postalCode",
                                               "businessCategory",
                                               "organizationIdentifier",
                                               "commonName",
                                               "countryName",
                                               "localityName",
                                               "stateOrProvinceName",
                                               "organizationName",
                                               "organizationalUnitName",
                                               "domainComponent",
                                               "userId",
                                               "streetAddress",
                                               "givenName",
                                               "surname"};
  auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
  for (const auto name : known) {
    if (name.size() == type.size() &&
        std::equal(name.begin(), name.end(), type.begin(),
                   [&](char a, char b) { return lower(a) == lower(b); })) {
      type = std::string(name);
      return true;
    }
  }
  const bool oid = !type.empty() && type.front() != '.' && type.back() != '.' &&
                   type.find('.') != std::string::npos && type.find("..") == std::string::npos &&
                   type.find_first_not_of("0123456789.") == std::string::npos;
  return oid;
}

// RFC 4514 text ("CN=Private Root,O=Example") as (type, value) pairs in the order written.
// Returns an error message, or "" when the text parses.
std::string parse_rfc4514(std::string_view text,
                          std::vector<std::pair<std::string, std::string>>& out) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && text[i] == ' ') ++i;
    const auto eq = text.find('=', i);
    if (eq == std::string_view::npos) {
      return fmt::format("'{}' is not an RFC 4514 name: expected TYPE=value", text.substr(i));
    }
    std::string type(text.substr(i, eq - i));
    while (!type.empty() && type.back() == ' ') type.pop_back();
    if (!canonical_attribute_type(type)) {
      return fmt::format(
          "'{}' is not an attribute type (use CN, O, OU, C, L, ST, DC, emailAddress, ... or a "
          "dotted OID)",
          type);
    }
    std::string value;
    std::size_t keep = 0;  // length of value without trailing unescaped spaces
    for (i = eq + 1; i < text.size() && text[i] != ','; ++i) {
      const char c = text[i];
      if (c == '+') {
        return "multi-valued RDNs ('+') are not supported here; name the CA by sha256 instead";
      }
      if (c == '\\') {
        if (i + 1 >= text.size()) return "the name ends with an unfinished '\\' escape";
        if (i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
          value += static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2]));
          i += 2;
        } else {
          value += text[++i];
        }
        keep = value.size();
        continue;
      }
      if (c == ' ' && value.empty()) continue;
      value += c;
      if (c != ' ') keep = value.size();
    }
    value.resize(keep);
    if (value.empty()) return fmt::format("attribute {} has an empty value", type);
    out.emplace_back(std::move(type), std::move(value));
    if (i < text.size()) ++i;  // the ','
  }
  if (out.empty()) return "the name is empty";
  return "";
}

void revocation_mode(Loader& l, const YAML::Node& parent, const std::string& path,
                     RevocationMode& out) {
  l.choice(parent, path, "mode", out,
           {{"none", RevocationMode::none},
            {"crl", RevocationMode::crl},
            {"ocsp", RevocationMode::ocsp},
            {"ocsp_then_crl", RevocationMode::ocsp_then_crl},
            {"crl_then_ocsp", RevocationMode::crl_then_ocsp}});
}

void load_issuer_policies(Loader& l, const YAML::Node& issuers, Revocation& r) {
  if (!issuers.IsSequence()) {
    l.error(issuers, "revocation.issuers",
            "expected a list of { subject: ..., on_unknown: ... } or { sha256: ..., on_unknown: "
            "... }");
    return;
  }
  for (std::size_t i = 0; i < issuers.size(); ++i) {
    const auto key = fmt::format("revocation.issuers[{}]", i);
    const auto& node = issuers[i];
    if (!l.map(node, key, {"subject", "sha256", "on_unknown", "mode", "ocsp_responder"})) continue;
    IssuerPolicy policy;
    policy.file = l.file();
    policy.line = l.line_of(node);
    policy.key = key;
    l.string(node, key, "subject", policy.subject);
    l.string(node, key, "sha256", policy.sha256);
    if (!node["on_unknown"].IsDefined() && !node["mode"].IsDefined() &&
        !node["ocsp_responder"].IsDefined()) {
      l.error(node, key, "sets nothing: give on_unknown, mode or ocsp_responder");
    }
    policy.on_unknown = r.on_unknown;
    l.choice(node, key, "on_unknown", policy.on_unknown,
             {{"deny", OnUnknown::deny}, {"allow", OnUnknown::allow}});
    if (node["mode"].IsDefined()) {
      RevocationMode mode = r.mode;
      revocation_mode(l, node, key, mode);
      policy.mode = mode;
    }
    ocsp_responder(l, node, key, "ocsp_responder", policy.ocsp_responder);
    if (policy.subject.empty() == policy.sha256.empty()) {
      l.error(node, key, "needs exactly one of subject or sha256");
    } else if (!policy.subject.empty()) {
      if (auto problem = parse_rfc4514(policy.subject, policy.subject_rdns); !problem.empty()) {
        l.error(node["subject"], key + ".subject", problem);
      }
    } else {
      std::string hex;
      for (char c : policy.sha256) {
        if (c == ':') continue;
        hex += c >= 'A' && c <= 'F' ? static_cast<char>(c - 'A' + 'a') : c;
      }
      if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
        l.error(node["sha256"], key + ".sha256",
                fmt::format("'{}' is not a SHA-256 fingerprint (64 hex digits, colons allowed)",
                            policy.sha256));
      }
      policy.sha256 = hex;
    }
    r.issuers.push_back(std::move(policy));
  }
}

void load_ocsp(Loader& l, const YAML::Node& node, Revocation::Ocsp& o) {
  const std::string p = "revocation.ocsp";
  if (!l.map(node, p,
             {"timeout", "nonce", "method", "clock_skew", "min_ttl", "max_ttl", "failure_ttl",
              "refresh_recent", "max_entries", "check_intermediates"})) {
    return;
  }
  l.duration(node, p, "timeout", o.timeout);
  l.boolean(node, p, "nonce", o.nonce);
  l.choice(node, p, "method", o.get, {{"post", false}, {"get", true}});
  l.duration(node, p, "clock_skew", o.clock_skew, true);
  l.duration(node, p, "min_ttl", o.min_ttl);
  l.duration(node, p, "max_ttl", o.max_ttl);
  l.duration(node, p, "failure_ttl", o.failure_ttl);
  l.duration(node, p, "refresh_recent", o.refresh_recent, true);
  int entries = static_cast<int>(o.max_entries);
  l.integer(node, p, "max_entries", entries, 1, 100'000'000);
  o.max_entries = static_cast<std::uint64_t>(entries);
  l.boolean(node, p, "check_intermediates", o.check_intermediates);
  if (o.max_ttl < o.min_ttl) {
    l.error(node["max_ttl"].IsDefined() ? node["max_ttl"] : node, p + ".max_ttl",
            "must not be shorter than min_ttl");
  }
}

void load_revocation(Loader& l, const YAML::Node& node, Revocation& r) {
  if (!l.map(node, "revocation", {"mode", "on_unknown", "issuers", "crl", "ocsp"})) return;
  revocation_mode(l, node, "revocation", r.mode);
  l.choice(node, "revocation", "on_unknown", r.on_unknown,
           {{"deny", OnUnknown::deny}, {"allow", OnUnknown::allow}});
  if (const auto issuers = node["issuers"]; issuers.IsDefined() && !issuers.IsNull()) {
    load_issuer_policies(l, issuers, r);
  }
  if (const auto ocsp = node["ocsp"]; ocsp.IsDefined() && !ocsp.IsNull()) {
    load_ocsp(l, ocsp, r.ocsp);
  }
  const auto crl = node["crl"];
  if (!crl.IsDefined()) return;
  if (!l.map(crl, "revocation.crl",
             {"sources", "discover", "refresh_interval", "stale_grace", "cache_dir",
              "fetch_timeout", "max_size", "https_ca"}))
    return;
  if (const auto sources = crl["sources"]; sources.IsDefined()) {
    if (!sources.IsSequence()) {
      l.error(sources, "revocation.crl.sources",
              "expected a list of { url: ... } or { file: ... }");
    } else {
      for (std::size_t i = 0; i < sources.size(); ++i) {
        const auto key = fmt::format("revocation.crl.sources[{}]", i);
        if (!l.map(sources[i], key, {"url", "file"})) continue;
        CrlSource source;
        l.string(sources[i], key, "url", source.url);
        l.path(sources[i], key, "file", source.file, false, true);
        if (source.url.empty() == source.file.empty()) {
          l.error(sources[i], key, "needs exactly one of url or file");
        } else if (!source.url.empty() && source.url.rfind("http://", 0) != 0 &&
                   source.url.rfind("https://", 0) != 0) {
          l.error(sources[i]["url"], key + ".url",
                  fmt::format("'{}' must start with http:// or https://", source.url));
        }
        r.crl.sources.push_back(std::move(source));
      }
    }
  }
  l.boolean(crl, "revocation.crl", "discover", r.crl.discover);
  l.duration(crl, "revocation.crl", "refresh_interval", r.crl.refresh_interval);
  l.duration(crl, "revocation.crl", "stale_grace", r.crl.stale_grace);
  // An empty string means "none" (as the example config writes it), not the config's directory.
  auto empty = [&](const char* key) {
    const auto value = crl[key];
    return value.IsDefined() && value.IsScalar() && value.Scalar().empty();
  };
  if (!empty("cache_dir"))
    l.path(crl, "revocation.crl", "cache_dir", r.crl.cache_dir, false, false);
  l.duration(crl, "revocation.crl", "fetch_timeout", r.crl.fetch_timeout);
  l.size(crl, "revocation.crl", "max_size", r.crl.max_size);
  if (!empty("https_ca")) l.path(crl, "revocation.crl", "https_ca", r.crl.https_ca, false, true);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

LoadResult parse_config(std::string_view yaml, const fs::path& file) {
  const auto absolute = fs::absolute(file).lexically_normal();
  Loader l(file.string(), absolute.parent_path());
  LoadResult result;
  auto& cfg = result.config;
  cfg.source = absolute;

  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    throw ConfigError({Diagnostic{file.string(), e.mark.line >= 0 ? e.mark.line + 1 : 0, "",
                                  "YAML syntax error: " + e.msg}});
  }
  if (!root.IsDefined() || root.IsNull()) {
    throw ConfigError({Diagnostic{file.string(), 0, "", "the configuration is empty"}});
  }
  if (!root.IsMap()) {
    throw ConfigError(
        {Diagnostic{file.string(), l.line_of(root), "", "the top level must be a map of keys"}});
  }
  l.map(root, "", {"listeners", "upstreams", "revocation", "admin", "logging", "runtime"});

  if (const auto upstreams = root["upstreams"]; !upstreams.IsDefined()) {
    l.error(root, "upstreams", "required key is missing");
  } else if (!upstreams.IsMap() || upstreams.size() == 0) {
    l.error(upstreams, "upstreams", "expected a map of upstream name to settings");
  } else {
    for (const auto& entry : upstreams) {
      Upstream upstream;
      upstream.name = entry.first.Scalar();
      load_upstream(l, entry.second, "upstreams." + upstream.name, upstream);
      cfg.upstreams[upstream.name] = std::move(upstream);
    }
  }

  if (const auto listeners = root["listeners"]; !listeners.IsDefined()) {
    l.error(root, "listeners", "required key is missing");
  } else if (!listeners.IsSequence() || listeners.size() == 0) {
    l.error(listeners, "listeners", "expected a non-empty list of listeners");
  } else {
    std::set<std::string> names, addresses;
    std::set<std::string> used_upstreams;
    for (std::size_t i = 0; i < listeners.size(); ++i) {
      Listener listener;
      const auto p = fmt::format("listeners[{}]", i);
      load_listener(l, listeners[i], p, listener);
      if (!listener.name.empty() && !names.insert(listener.name).second) {
        l.error(listeners[i]["name"], p + ".name",
                fmt::format("duplicate listener name '{}'", listener.name));
      }
      if (!listener.address.host.empty() && listener.address.port != 0 &&
          !addresses.insert(listener.address.to_string()).second) {
        l.error(listeners[i]["address"], p + ".address",
                fmt::format("another listener already uses {}", listener.address.to_string()));
      }
      for (std::size_t r = 0; r < listener.routes.size(); ++r) {
        const auto& up = listener.routes[r].upstream;
        if (up.empty()) continue;
        used_upstreams.insert(up);
        if (root["upstreams"].IsMap() && !cfg.upstreams.count(up)) {
          l.error(listeners[i]["routes"][r]["upstream"],
                  fmt::format("{}.routes[{}].upstream", p, r),
                  fmt::format("unknown upstream '{}'", up));
        }
      }
      cfg.listeners.push_back(std::move(listener));
    }
    for (const auto& [name, upstream] : cfg.upstreams) {
      if (!used_upstreams.count(name)) {
        l.warn(root["upstreams"][name], "upstreams." + name, "no route uses this upstream");
      }
    }
  }

  if (const auto revocation = root["revocation"]; revocation.IsDefined()) {
    load_revocation(l, revocation, cfg.revocation);
  }
  if (cfg.revocation.mode == RevocationMode::none) {
    l.warn(
        root["revocation"].IsDefined() ? root["revocation"] : root, "revocation.mode",
        "revocation checking is off: revoked client certificates are admitted until they expire");
  }

  if (const auto admin = root["admin"]; admin.IsDefined()) {
    if (l.map(admin, "admin", {"address"})) {
      l.host_port(admin, "admin", "address", cfg.admin.address, false);
      if (!is_loopback(cfg.admin.address.host)) {
        l.warn(admin["address"], "admin.address",
               fmt::format("{} is not a loopback address: the admin endpoints are unauthenticated",
                           cfg.admin.address.host));
      }
    }
  }
  if (const auto logging = root["logging"]; logging.IsDefined()) {
    if (l.map(logging, "logging", {"level", "access_log"})) {
      l.choice(logging, "logging", "level", cfg.logging.level,
               {{"trace", std::string("trace")},
                {"debug", std::string("debug")},
                {"info", std::string("info")},
                {"warn", std::string("warn")},
                {"error", std::string("error")},
                {"off", std::string("off")}});
      l.string(logging, "logging", "access_log", cfg.logging.access_log);
      const auto& a = cfg.logging.access_log;
      if (a != "stdout" && a != "stderr" && a != "off" && fs::path(a).is_relative()) {
        cfg.logging.access_log = (absolute.parent_path() / a).lexically_normal().string();
      }
    }
  }
  if (const auto runtime = root["runtime"]; runtime.IsDefined()) {
    if (l.map(runtime, "runtime", {"io_threads", "shutdown_grace", "watch_interval"})) {
      l.integer(runtime, "runtime", "io_threads", cfg.runtime.io_threads, 0, 1024);
      l.duration(runtime, "runtime", "shutdown_grace", cfg.runtime.shutdown_grace);
      l.duration(runtime, "runtime", "watch_interval", cfg.runtime.watch_interval, true);
    }
  }

  if (!l.errors.empty()) {
    std::stable_sort(l.errors.begin(), l.errors.end(),
                     [](const Diagnostic& a, const Diagnostic& b) { return a.line < b.line; });
    throw ConfigError(std::move(l.errors));
  }
  result.warnings = std::move(l.warnings);
  cfg.key_lines = std::move(l.key_lines);
  return result;
}

LoadResult load_config(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    throw ConfigError({Diagnostic{file.string(), 0, "",
                                  "cannot read the configuration file (missing or not readable)"}});
  }
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), file);
}

}  // namespace portcullis::config
