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

// Where a raw request header section stands, checked byte by byte before Beast's parser sees
// it: the parser accepts obs-fold (unfolding it into the value) and trims every kind of OWS, so
// a folded or padded Transfer-Encoding would become plain "chunked" and look innocent.
struct HeaderScan {
  enum class State { incomplete, complete, invalid };
  State state = State::incomplete;
  std::size_t length = 0;  // bytes of the header section, final empty line included
  std::optional<Rejection> rejection;
};

// Refuses: a bare LF or bare CR as a line ending, NUL anywhere, obs-fold (a field line starting
// with SP or HTAB), a field line without a name, and a Transfer-Encoding value padded with
// anything but one SP after the colon. `data` may hold more than one request.
HeaderScan scan_header_section(std::string_view data);

// The label a route carries in metrics and logs: its host match followed by its path prefix.
std::string route_label(const config::Route& route);

// Idempotent methods (RFC 9110 §9.2.2): a request with one of these and no body may be sent
// again on another connection when the first attempt failed before any response byte.
bool is_retry_safe(http::verb method);

// The host part of a Host header value, without port or IPv6 brackets, lower-cased.
std::string host_of(std::string_view host_header);

// The most specific route for host and path: exact host over "*.suffix" over "*", then the
// longest path prefix. Null when none matches.
const config::Route* select_route(const config::Listener& listener, std::string_view host,
                                  std::string_view path);

// Header lines as they go on the wire: "Name: value\r\n" for each, in order.
std::string header_lines(const tls::HeaderList& headers);

// Adds header lines (as header_lines writes them) to the fields of a message that Beast's own
// serializer will write.
void insert_header_lines(http::fields& fields, std::string_view lines);

// Removes what must not travel upstream: hop-by-hop fields (RFC 9110 §7.6.1) including every
// field named in Connection, Expect (answered here), and any client-sent copy of an identity
// header in any spelling. Returns the lines the gateway adds, serialized (see header_lines):
// X-Forwarded-For (the client's own chain, removed from `req`, extended by `client_ip`),
// X-Forwarded-Proto, then `identity_lines` (the connection's identity headers, serialized once
// per connection). They go after the hop-by-hop processing, so that
// `Connection: X-Client-Cert-Subject` cannot remove them; the caller writes them after the
// request's own fields, or inserts them with insert_header_lines.
std::string prepare_upstream_request(http::request_header<>& req, std::string_view client_ip,
                                     std::string_view identity_lines);

// Removes hop-by-hop fields from an upstream response before it goes to the client.
void prepare_client_response(http::response_header<>& res);

// A WebSocket opening handshake (RFC 6455 §4.1): GET with `Upgrade: websocket` and an
// `upgrade` token in Connection. Checked before hop-by-hop removal.
bool is_websocket_upgrade(const http::request_header<>& req);

// Puts back the two hop-by-hop fields a WebSocket upgrade needs, on the request to the
// upstream or on its 101 answer, after hop-by-hop removal.
template <bool isRequest>
void set_websocket_upgrade(http::header<isRequest>& h) {
  h.set(http::field::upgrade, "websocket");
  h.set(http::field::connection, "Upgrade");
}

}  // namespace portcullis::proxy
