#pragma once
// The rules every request passes before anything is forwarded, and the header rewriting on the
// way to the upstream and back. Pure functions over Beast headers: no I/O.
// Thread-safety: stateless.

#include "portcullis/config/config.hpp"
#include "portcullis/tls/identity_headers.hpp"

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace portcullis::proxy {

namespace http = boost::beast::http;

struct Rejection {
  http::status status;
  std::string reason;  // short stable code, logged and sent in the body
};

// Framing and identity checks (RFC 9112 and the request-smuggling defences): one Host on
// HTTP/1.1, no Content-Length together with Transfer-Encoding, a single Content-Length,
// Transfer-Encoding only as exactly "chunked" and never on HTTP/1.0, and, when the client sent
// SNI, a Host that names the same server (421 otherwise).
std::optional<Rejection> validate_request(const http::request_header<>& req, std::string_view sni);

// The host part of a Host header value, without port or IPv6 brackets, lower-cased.
std::string host_of(std::string_view host_header);

// The most specific route for host and path: exact host over "*.suffix" over "*", then the
// longest path prefix. Null when none matches.
const config::Route* select_route(const config::Listener& listener, std::string_view host,
                                  std::string_view path);

// Removes what must not travel upstream: hop-by-hop fields (RFC 9110 §7.6.1) including every
// field named in Connection, Expect (answered here), and any client-sent copy of an identity
// header in any spelling. Then adds X-Forwarded-For/-Proto and the identity headers, after the
// hop-by-hop processing so that `Connection: X-Client-Cert-Subject` cannot remove them.
void prepare_upstream_request(http::request_header<>& req, std::string_view client_ip,
                              const tls::HeaderList& identity);

// Removes hop-by-hop fields from an upstream response before it goes to the client.
void prepare_client_response(http::response_header<>& res);

}  // namespace portcullis::proxy
