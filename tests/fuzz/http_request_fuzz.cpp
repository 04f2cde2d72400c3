// libFuzzer target: one request from raw bytes to the forwarding decision, as a client session
// takes it: the byte-level header pre-scan, Beast's request parser with the listener's header
// limit, the framing and smuggling checks, route selection, authorization, and the header
// rewriting for the upstream. The first input byte picks the SNI and the identity preset; the
// rest is what the client sent.
//
// Invariants on every request accepted for forwarding:
// - the route matches the request's host (or SNI) and path, and the client is authorized on it;
// - the identity headers it carries are exactly the injected ones, whatever the client sent;
// - no hop-by-hop field, Expect, or field the client named in Connection is left;
// - no Transfer-Encoding and at most one, all-digit, Content-Length; at most one Host;
// - no empty field name, no CR, LF or NUL in a value;
// - serialized, it passes the same pre-scan, parser and checks again, with the same fields.

#include "portcullis/authz/authorizer.hpp"
#include "portcullis/proxy/request_rules.hpp"
#include "portcullis/tls/identity_headers.hpp"
#include "portcullis/tls/peer_identity.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/rfc7230.hpp>
#include <boost/beast/http/write.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

using namespace portcullis;
namespace http = boost::beast::http;

namespace {

struct Fixture {
  config::Listener listener;
  tls::PeerIdentity identity;
};

config::Route route(std::string host, std::string prefix, std::vector<config::AllowRule> allow) {
  config::Route r;
  r.match.host = std::move(host);
  r.match.path_prefix = std::move(prefix);
  r.upstream = "app";
  r.has_allow = !allow.empty();
  r.allow = std::move(allow);
  return r;
}

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture out;
    tls::CertSpec ca_spec;
    ca_spec.common_name = "Fuzz CA";
    ca_spec.is_ca = true;
    const auto ca = tls::issue_certificate(ca_spec, nullptr);
    tls::CertSpec leaf_spec;
    leaf_spec.common_name = "client-1";
    leaf_spec.sans = {"URI:spiffe://example.org/client-1", "DNS:client-1.example"};
    const auto leaf = tls::issue_certificate(leaf_spec, &ca);
    out.identity = tls::identity_from_certificate(leaf.cert.get(), nullptr);

    config::AllowRule by_cn;
    by_cn.subject = {{"CN", "client-*"}};
    config::AllowRule by_dns;
    by_dns.san_dns = "admin.example";  // not the client's: denies
    out.listener.max_header_bytes = 16 * 1024;
    out.listener.routes = {
        route("*", "/", {}),
        route("*", "/admin/", {by_dns}),
        route("api.example", "/", {by_cn}),
        route("*.example", "/v1/", {}),
        route("gw.example", "/private/", {by_dns}),
    };
    return out;
  }();
  return f;
}

char fold(char c) {
  if (c == '_') return '-';
  return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

std::string folded(std::string_view name) {
  std::string out;
  for (char c : name) out += fold(c);
  return out;
}

// Written out again here rather than calling tls::is_identity_header, which is under test.
bool looks_like_identity(std::string_view name) {
  const auto f = folded(name);
  return f.rfind("x-client-cert-", 0) == 0 || f.rfind("x-amzn-mtls-clientcert", 0) == 0 ||
         f == "client-cert" || f == "client-cert-chain" || f == "x-forwarded-client-cert";
}

bool is_forbidden_upstream(std::string_view name) {
  static constexpr std::array<std::string_view, 10> names = {
      "connection", "keep-alive",          "proxy-connection",   "te",     "trailer",
      "upgrade",    "proxy-authorization", "proxy-authenticate", "expect", "transfer-encoding"};
  const auto f = folded(name);
  return std::find(names.begin(), names.end(), f) != names.end();
}

struct Parsed {
  http::request_parser<http::buffer_body> parser;
  bool ok = false;
};

// The pre-scan, then Beast's parser on the complete header section, as the session does.
void parse(std::string_view data, std::uint64_t header_limit, Parsed& out) {
  const auto scan = proxy::scan_header_section(data);
  if (scan.state == proxy::HeaderScan::State::invalid) {
    if (!scan.rejection || scan.rejection->reason.empty()) std::abort();
    return;
  }
  if (scan.state != proxy::HeaderScan::State::complete) return;
  if (scan.length == 0 || scan.length > data.size()) std::abort();
  out.parser.header_limit(static_cast<std::uint32_t>(header_limit));
  out.parser.body_limit(boost::none);
  boost::system::error_code ec;
  std::string_view rest = data.substr(0, scan.length);
  while (!rest.empty() && !out.parser.is_header_done()) {
    const auto used = out.parser.put(boost::asio::buffer(rest.data(), rest.size()), ec);
    if (ec) return;
    if (used == 0) break;
    rest.remove_prefix(used);
  }
  out.ok = out.parser.is_header_done();
}

void check_forwarded(const http::request_header<>& req, const http::request_header<>& original,
                     const tls::HeaderList& identity) {
  // Field names the client listed in Connection: none of them may travel.
  std::vector<std::string> named;
  const auto connection = original.equal_range(http::field::connection);
  for (auto it = connection.first; it != connection.second; ++it) {
    for (auto token : http::token_list{it->value()}) named.push_back(folded(token));
  }

  tls::HeaderList carried;
  std::size_t hosts = 0, lengths = 0;
  for (const auto& f : req) {
    const std::string_view name = f.name_string();
    const std::string_view value = f.value();
    if (name.empty()) std::abort();
    if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) std::abort();
    if (is_forbidden_upstream(name)) std::abort();
    if (std::find(named.begin(), named.end(), folded(name)) != named.end() &&
        !looks_like_identity(name) && folded(name) != "x-forwarded-for" &&
        folded(name) != "x-forwarded-proto") {
      std::abort();
    }
    if (looks_like_identity(name)) carried.emplace_back(name, value);
    if (folded(name) == "host") ++hosts;
    if (folded(name) == "content-length") {
      ++lengths;
      if (value.empty() || value.find_first_not_of("0123456789") != std::string_view::npos)
        std::abort();
    }
  }
  if (carried != identity) std::abort();
  if (hosts > 1 || lengths > 1) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const auto& fx = fixture();
  static constexpr std::array<std::string_view, 3> snis = {"", "gw.example", "api.example"};
  const auto sni = snis[data[0] % snis.size()];
  const auto preset = static_cast<config::IdentityPreset>((data[0] >> 2) % 4);
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);

  Parsed parsed;
  parse(bytes, fx.listener.max_header_bytes, parsed);
  if (!parsed.ok) return 0;
  auto& req = parsed.parser.get();
  if (proxy::validate_request(req, sni)) return 0;

  const std::string_view target = req.target();
  const auto path = target.substr(0, target.find('?'));
  const auto host = proxy::host_of(req[http::field::host]);
  const std::string_view matched = host.empty() ? sni : std::string_view(host);
  const auto* chosen = proxy::select_route(fx.listener, matched, path);
  if (!chosen) return 0;
  const auto& prefix = chosen->match.path_prefix;
  if (path.substr(0, prefix.size()) != prefix) std::abort();
  const auto& pattern = chosen->match.host;
  if (pattern != "*" && pattern.rfind("*.", 0) != 0 && !boost::beast::iequals(pattern, matched))
    std::abort();
  const auto decision = authz::authorize(*chosen, fx.identity);
  if (!decision.allowed) {
    if (!chosen->has_allow) std::abort();
    return 0;
  }

  const http::request_header<> original = req;
  const auto identity = tls::identity_headers(preset, fx.identity);
  proxy::insert_header_lines(
      req, proxy::prepare_upstream_request(req, "127.0.0.1", proxy::header_lines(identity)));
  check_forwarded(req, original, identity);

  // What goes upstream is itself a request the gateway would accept, field for field.
  std::ostringstream wire;
  wire << static_cast<const http::request_header<>&>(req);
  const auto text = wire.str();
  Parsed again;
  parse(text, 1 << 20, again);
  if (!again.ok) std::abort();
  const auto& reparsed = again.parser.get();
  // An HTTP/1.0 request without Host goes upstream as HTTP/1.1 without Host: the only refusal
  // the forwarded form may meet is that one.
  const auto refused = proxy::validate_request(reparsed, {});
  if (refused && !(original.count(http::field::host) == 0 && refused->reason == "missing_host"))
    std::abort();
  if (reparsed.method_string() != req.method_string() || reparsed.target() != req.target())
    std::abort();
  if (std::distance(reparsed.begin(), reparsed.end()) != std::distance(req.begin(), req.end()))
    std::abort();
  return 0;
}
