#include "portcullis/proxy/request_rules.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/rfc7230.hpp>

#include <algorithm>
#include <cctype>
#include <vector>

namespace portcullis::proxy {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_hop_by_hop(http::field f) {
  switch (f) {
    case http::field::connection:
    case http::field::keep_alive:
    case http::field::proxy_connection:
    case http::field::te:
    case http::field::trailer:
    case http::field::transfer_encoding:
    case http::field::upgrade:
    case http::field::proxy_authenticate:
    case http::field::proxy_authorization:
      return true;
    default:
      return false;
  }
}

// Collects the field names listed in every Connection header, lower-cased.
std::vector<std::string> connection_tokens(const http::fields& fields) {
  std::vector<std::string> names;
  auto range = fields.equal_range(http::field::connection);
  for (auto it = range.first; it != range.second; ++it) {
    for (auto token : http::token_list{it->value()}) names.push_back(lower(token));
  }
  return names;
}

template <bool isRequest>
void remove_hop_by_hop(http::header<isRequest>& h, bool also_identity) {
  const auto named = connection_tokens(h);
  for (auto it = h.begin(); it != h.end();) {
    const auto name = it->name_string();
    bool drop = is_hop_by_hop(it->name()) ||
                std::any_of(named.begin(), named.end(),
                            [&](const std::string& n) { return boost::beast::iequals(n, name); });
    if constexpr (isRequest) {
      drop = drop || it->name() == http::field::expect ||
             (also_identity && tls::is_identity_header(name));
    }
    it = drop ? h.erase(it) : std::next(it);
  }
}

bool host_matches(std::string_view pattern, std::string_view host) {
  if (pattern == "*") return true;
  if (pattern.size() > 2 && pattern.substr(0, 2) == "*.") {
    const auto suffix = pattern.substr(1);  // ".example.org"
    return host.size() > suffix.size() &&
           boost::beast::iequals(host.substr(host.size() - suffix.size()), suffix);
  }
  return boost::beast::iequals(pattern, host);
}

int host_specificity(std::string_view pattern) {
  if (pattern == "*") return 0;
  if (pattern.substr(0, 2) == "*.") return 1 + static_cast<int>(pattern.size());
  return 100000;
}

}  // namespace

std::string host_of(std::string_view value) {
  value = trim(value);
  if (!value.empty() && value.front() == '[') {
    const auto close = value.find(']');
    return lower(value.substr(1, close == std::string_view::npos ? value.npos : close - 1));
  }
  const auto colon = value.rfind(':');
  if (colon != std::string_view::npos && value.find(':') == colon) value = value.substr(0, colon);
  return lower(value);
}

std::optional<Rejection> validate_request(const http::request_header<>& req, std::string_view sni) {
  const auto count = [&](http::field f) { return req.count(f); };
  const auto hosts = count(http::field::host);
  if (hosts > 1) return Rejection{http::status::bad_request, "multiple_host"};
  if (hosts == 0 && req.version() >= 11)
    return Rejection{http::status::bad_request, "missing_host"};

  const auto lengths = count(http::field::content_length);
  const auto encodings = count(http::field::transfer_encoding);
  if (lengths > 1) return Rejection{http::status::bad_request, "multiple_content_length"};
  if (lengths && encodings) {
    return Rejection{http::status::bad_request, "content_length_with_transfer_encoding"};
  }
  if (encodings) {
    if (req.version() < 11)
      return Rejection{http::status::bad_request, "transfer_encoding_on_http10"};
    if (encodings > 1 || !boost::beast::iequals(req[http::field::transfer_encoding], "chunked")) {
      return Rejection{http::status::bad_request, "unsupported_transfer_encoding"};
    }
  }
  if (lengths) {
    const auto v = req[http::field::content_length];
    if (v.empty() ||
        !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return Rejection{http::status::bad_request, "bad_content_length"};
    }
  }
  for (const auto& f : req) {
    if (f.name_string().empty()) return Rejection{http::status::bad_request, "empty_header_name"};
    const auto v = f.value();
    if (std::any_of(v.begin(), v.end(),
                    [](char c) { return c == '\0' || c == '\r' || c == '\n'; })) {
      return Rejection{http::status::bad_request, "bad_header_value"};
    }
  }
  if (!sni.empty() && hosts == 1 && host_of(req[http::field::host]) != lower(sni)) {
    return Rejection{http::status::misdirected_request, "sni_host_mismatch"};
  }
  return std::nullopt;
}

HeaderScan scan_header_section(std::string_view data) {
  const auto invalid = [](std::string_view reason) {
    HeaderScan scan;
    scan.state = HeaderScan::State::invalid;
    scan.rejection = Rejection{http::status::bad_request, std::string(reason)};
    return scan;
  };
  std::size_t pos = 0;
  for (bool first_line = true;; first_line = false) {
    const auto nl = data.find('\n', pos);
    const auto line = data.substr(pos, nl == std::string_view::npos ? data.npos : nl - pos);
    if (line.find('\0') != std::string_view::npos) return invalid("nul_in_header");
    if (nl == std::string_view::npos) {
      // A CR not followed by LF can already be judged when more bytes follow it.
      const auto cr = line.find('\r');
      if (cr != std::string_view::npos && cr + 1 < line.size()) return invalid("bare_cr");
      return HeaderScan{};
    }
    if (line.empty() || line.back() != '\r') return invalid("bare_lf");
    const auto content = line.substr(0, line.size() - 1);
    if (content.find('\r') != std::string_view::npos) return invalid("bare_cr");
    pos = nl + 1;
    if (first_line) {
      if (content.empty() || content.front() == ' ' || content.front() == '\t')
        return invalid("bad_request_line");
      continue;
    }
    if (content.empty()) {
      HeaderScan scan;
      scan.state = HeaderScan::State::complete;
      scan.length = pos;
      return scan;
    }
    if (content.front() == ' ' || content.front() == '\t') return invalid("obs_fold");
    const auto colon = content.find(':');
    if (colon == 0) return invalid("empty_header_name");
    if (colon == std::string_view::npos) return invalid("bad_header_line");
    if (boost::beast::iequals(content.substr(0, colon), "transfer-encoding")) {
      auto value = content.substr(colon + 1);
      if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      if (value != trim(value) || value.find('\t') != std::string_view::npos ||
          value.find("  ") != std::string_view::npos) {
        return invalid("obfuscated_transfer_encoding");
      }
    }
  }
}

std::string route_label(const config::Route& route) {
  return route.match.host + route.match.path_prefix;
}

bool is_retry_safe(http::verb method) {
  switch (method) {
    case http::verb::get:
    case http::verb::head:
    case http::verb::options:
    case http::verb::trace:
    case http::verb::put:
    case http::verb::delete_:
      return true;
    default:
      return false;
  }
}

const config::Route* select_route(const config::Listener& listener, std::string_view host,
                                  std::string_view path) {
  const config::Route* best = nullptr;
  int best_host = -1;
  std::size_t best_prefix = 0;
  for (const auto& route : listener.routes) {
    if (!host_matches(route.match.host, host)) continue;
    if (path.substr(0, route.match.path_prefix.size()) != route.match.path_prefix) continue;
    const int h = host_specificity(route.match.host);
    const auto p = route.match.path_prefix.size();
    if (h > best_host || (h == best_host && p > best_prefix)) {
      best = &route;
      best_host = h;
      best_prefix = p;
    }
  }
  return best;
}

std::string header_lines(const tls::HeaderList& headers) {
  std::string out;
  for (const auto& [name, value] : headers) out.append(name).append(": ").append(value) += "\r\n";
  return out;
}

void insert_header_lines(http::fields& fields, std::string_view lines) {
  while (!lines.empty()) {
    const auto end = lines.find("\r\n");
    const auto line = lines.substr(0, end);
    const auto colon = line.find(": ");
    fields.insert(line.substr(0, colon), line.substr(colon + 2));
    lines.remove_prefix(end == std::string_view::npos ? lines.size() : end + 2);
  }
}

std::string prepare_upstream_request(http::request_header<>& req, std::string_view client_ip,
                                     std::string_view identity_lines) {
  remove_hop_by_hop(req, true);
  req.version(11);
  std::string lines;
  lines.reserve(64 + identity_lines.size());
  // The client's own X-Forwarded-For is kept and extended, as a chain of hops.
  lines.append("X-Forwarded-For: ");
  if (const auto prior = req.find("X-Forwarded-For"); prior != req.end()) {
    lines.append(prior->value()).append(", ");
    req.erase("X-Forwarded-For");
  }
  lines.append(client_ip).append("\r\n");
  req.erase("X-Forwarded-Proto");
  lines.append("X-Forwarded-Proto: https\r\n");
  lines.append(identity_lines);
  return lines;
}

bool is_websocket_upgrade(const http::request_header<>& req) {
  if (req.method() != http::verb::get ||
      !boost::beast::iequals(req[http::field::upgrade], "websocket"))
    return false;
  const auto tokens = connection_tokens(req);
  return std::find(tokens.begin(), tokens.end(), "upgrade") != tokens.end();
}

void prepare_client_response(http::response_header<>& res) {
  remove_hop_by_hop(res, false);
}

}  // namespace portcullis::proxy
