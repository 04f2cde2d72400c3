#include "portcullis/proxy/client_session.hpp"

#include "http_relay.hpp"
#include "portcullis/authz/authorizer.hpp"
#include "portcullis/proxy/request_rules.hpp"
#include "portcullis/tls/identity_headers.hpp"
#include "portcullis/tls/peer_identity.hpp"
#include "portcullis/tls/server_context.hpp"
#include "portcullis/tls/socket_stream.hpp"

#include <fmt/chrono.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <optional>
#include <utility>

namespace portcullis::proxy {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
// TLS on the socket itself: no record buffers or BIO pair held per connection.
using ClientStream = tls::SocketStream;

namespace {

constexpr std::size_t relay_chunk_size = 64 * 1024;
constexpr std::size_t upstream_read_size = 16 * 1024;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

admin::HandshakeResult classify_handshake_failure(const boost::system::error_code& ec, SSL* ssl) {
  using admin::HandshakeResult;
  if (ec == beast::error::timeout) return HandshakeResult::timeout;
  const auto reason = tls::verify_failure_reason(ssl);
  static const std::pair<std::string_view, HandshakeResult> names[] = {
      {"no_certificate", HandshakeResult::no_certificate},
      {"unknown_ca", HandshakeResult::unknown_ca},
      {"expired", HandshakeResult::expired},
      {"not_yet_valid", HandshakeResult::not_yet_valid},
      {"bad_purpose", HandshakeResult::bad_purpose},
      {"chain_too_long", HandshakeResult::chain_too_long},
      {"revoked", HandshakeResult::revoked},
      {"revocation_unknown", HandshakeResult::revocation_unknown},
      {"bad_certificate", HandshakeResult::bad_certificate},
  };
  for (const auto& [name, result] : names) {
    if (reason == name) return result;
  }
  if (ec.category() == net::error::get_ssl_category() &&
      ERR_GET_REASON(static_cast<unsigned long>(ec.value())) ==
          SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    return HandshakeResult::no_certificate;
  }
  return HandshakeResult::protocol_error;
}

bool is_tls_error(const boost::system::error_code& ec) {
  return ec.category() == net::error::get_ssl_category() || ec == ssl::error::stream_truncated;
}

// How an upstream failure is counted and logged: a timeout, a TLS failure, or `other`.
struct UpstreamFailure {
  admin::UpstreamError kind;
  const char* reason;
};

UpstreamFailure classify_upstream_failure(const boost::system::error_code& ec,
                                          const char* timeout_reason, UpstreamFailure other) {
  if (ec == beast::error::timeout) return {admin::UpstreamError::timeout, timeout_reason};
  if (is_tls_error(ec)) return {admin::UpstreamError::tls, "upstream_tls_failed"};
  return other;
}

// A refusal body: a reason code the client can act on, never certificate internals. Built
// outside co_await expressions (GCC 12 mishandles initializer lists held across a suspension).
std::string json_error(std::string_view error, std::string_view reason) {
  boost::json::object body;
  body["error"] = error;
  body["reason"] = reason;
  return boost::json::serialize(body) + "\n";
}

// A stable reason code for the errors Beast's parser reports on a request header.
std::string parse_error_reason(const boost::system::error_code& ec) {
  static const std::pair<http::error, std::string_view> names[] = {
      {http::error::header_limit, "header_too_large"},
      {http::error::bad_method, "bad_method"},
      {http::error::bad_target, "bad_target"},
      {http::error::bad_version, "bad_version"},
      {http::error::bad_field, "bad_header_name"},
      {http::error::bad_value, "bad_header_value"},
      {http::error::bad_content_length, "bad_content_length"},
      {http::error::bad_transfer_encoding, "unsupported_transfer_encoding"},
      {http::error::bad_line_ending, "bad_line_ending"},
  };
  for (const auto& [code, name] : names) {
    if (ec == code) return std::string(name);
  }
  return "malformed_request";
}

// What the access log and metrics need to know about one request.
struct Exchange {
  Clock::time_point started = Clock::now();
  std::string method;
  std::string path;
  unsigned status = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::string route_upstream;
  std::string endpoint;
  std::string reason;  // why a request was refused or failed, empty when it was forwarded
};

class Session {
 public:
  // `peer` is the client's address and port, as "192.0.2.1:40000" or "[2001:db8::1]:40000".
  Session(SessionParams params, ClientStream& stream, std::string peer)
      : p_(std::move(params)),
        cfg_(*p_.listener->config),
        stream_(stream),
        peer_(std::move(peer)),
        id_(p_.services->next_connection_id.fetch_add(1, std::memory_order_relaxed)) {}

  ~Session() {
    if (handle_) p_.worker->untrack(*handle_);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Serves the connection until it closes (false), or until it waits for its next request
  // with nothing buffered (true): the caller then parks it, and calls run() again when the
  // socket is readable.
  net::awaitable<bool> run();

 private:
  net::awaitable<bool> handshake();
  net::awaitable<revocation::Verdict> revocation_verdict(const revocation::Checker& checker);
  net::awaitable<std::pair<boost::system::error_code, std::optional<Rejection>>>
  read_header_section(Clock::time_point due);
  net::awaitable<boost::system::error_code> read_first_body_piece(
      http::request_parser<http::buffer_body>& parser);
  net::awaitable<bool> exchange(Worker::Handle handle, Clock::time_point deadline);
  net::awaitable<bool> serve(http::request_parser<http::buffer_body>& parser, Exchange& ex);
  net::awaitable<bool> forward(http::request_parser<http::buffer_body>& parser,
                               const config::Route& route, Exchange& ex);
  net::awaitable<void> tunnel(upstream::UpstreamStream& upstream,
                              beast::flat_buffer& upstream_buffer, Exchange& ex);
  net::awaitable<void> respond(unsigned status, std::string_view content_type, std::string body,
                               bool keep_alive, Exchange& ex);
  void log_exchange(const Exchange& ex);

  SessionParams p_;
  const config::Listener& cfg_;
  ClientStream& stream_;
  std::string peer_;
  std::uint64_t id_;
  // Read from what the connection already holds rather than kept twice.
  std::string_view client_ip() const {
    auto ip = std::string_view(peer_).substr(0, peer_.rfind(':'));
    if (!ip.empty() && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
    return ip;
  }
  std::string_view sni() {
    const char* name = SSL_get_servername(stream_.native_handle(), TLSEXT_NAMETYPE_host_name);
    return name ? name : "";
  }
  // The client's identity and the headers it gives, taken from the listener's identity cache
  // (or worked out) when a request first needs them: a connection that sends none holds
  // neither, and a client's connections share one copy.
  const tls::PeerIdentity& identity();
  std::shared_ptr<const tls::PeerIdentity> identity_;
  std::shared_ptr<const std::string> identity_lines_;  // serialized (see header_lines)
  std::uint64_t revocation_generation_ = 0;
  // Set when revocation refused the client after its handshake (a resumed session, or a status
  // resolved after it): the first request is answered 403 with this reason, and nothing more.
  std::string_view refusal_;
  beast::flat_buffer buffer_;
  // Allocated at the first body or response relayed: an idle connection does not hold it.
  std::vector<char> chunk_;
  std::vector<char>& chunk() {
    if (chunk_.empty()) chunk_.resize(relay_chunk_size);
    return chunk_;
  }
  std::optional<std::size_t> preread_;    // body bytes already in chunk_, not yet forwarded
  std::optional<Worker::Handle> handle_;  // tracked by the worker once the handshake is done
  bool first_ = true;                     // no request read yet
  bool parked_ = false;                   // run() returned true and was not called again
  bool client_closes_ = false;            // the last request, read whole, asked to close
  Clock::time_point deadline_{};          // for the next request's header
};

const tls::PeerIdentity& Session::identity() {
  if (!identity_) {
    auto cached = p_.listener->identities->get(stream_.native_handle());
    identity_ = std::move(cached.identity);
    identity_lines_ = std::move(cached.header_lines);
  }
  return *identity_;
}

// Reads until buffer_ holds a whole header section (or the listener's header limit or
// deadline is reached), checking the raw bytes on the way: see scan_header_section. Called with
// bytes in buffer_ or the socket just seen readable, so its first read need not wait.
net::awaitable<std::pair<boost::system::error_code, std::optional<Rejection>>>
Session::read_header_section(Clock::time_point due) {
  // A header nearly always arrives whole in the first read, which the socket's expiry bounds
  // (a client that sent nothing is closed at the deadline, silently). Once part of a header is
  // here, a deadline timer bounds the reads instead: it cancels them rather than letting the
  // socket's expiry close the connection, so a client too slow to send its header gets its 408.
  auto& lowest = beast::get_lowest_layer(stream_);
  lowest.expires_after(due - Clock::now());
  std::optional<net::steady_timer> deadline;
  bool expired = false;
  for (bool first_pass = true;;) {
    const auto* data = static_cast<const char*>(buffer_.data().data());
    const auto size = std::min<std::size_t>(buffer_.size(), cfg_.max_header_bytes + 4);
    const auto scan = scan_header_section(std::string_view(data, size));
    if (scan.state == HeaderScan::State::complete)
      co_return std::pair{boost::system::error_code{}, std::nullopt};
    if (scan.state == HeaderScan::State::invalid)
      co_return std::pair{boost::system::error_code{}, scan.rejection};
    if (buffer_.size() > cfg_.max_header_bytes) {
      co_return std::pair{
          boost::system::error_code{},
          Rejection{http::status::request_header_fields_too_large, "header_too_large"}};
    }
    boost::system::error_code ec;
    std::size_t n = 0;
    if (!deadline && (!first_pass || buffer_.size() != 0)) {
      lowest.expires_after(due - Clock::now() + std::chrono::seconds(5));
      deadline.emplace(stream_.get_executor(), due);
      deadline->async_wait([&lowest, &expired](boost::system::error_code wait_ec) {
        if (wait_ec) return;
        expired = true;
        lowest.socket().cancel();
      });
    }
    if (buffer_.size() == 0 && !first_pass) {
      // A read that brought nothing (a TLS record without data): wait for more before the next
      // one. At the first pass Session::run has just read, or seen the socket readable.
      std::tie(ec) = co_await stream_.async_wait_readable(net::as_tuple(net::use_awaitable));
    }
    first_pass = false;
    if (!ec) {
      // Nearly always the bytes are there (the socket was just seen readable): read at once,
      // without an asynchronous operation's trip through the executor.
      const auto space = buffer_.prepare(4096);
      if (!stream_.read_some_now(space, n, ec)) {
        std::tie(ec, n) =
            co_await stream_.async_read_some(space, net::as_tuple(net::use_awaitable));
      }
      buffer_.commit(n);
    }
    if (ec) {
      // Beast's read_header reports a clean close between requests as end_of_stream.
      if (ec == net::error::eof && buffer_.size() == 0) ec = http::error::end_of_stream;
      if (expired) ec = beast::error::timeout;
      co_return std::pair{ec, std::nullopt};
    }
  }
}

// Reads the first piece of a request body before any upstream is chosen: a malformed chunk
// header, or a body over the route's limit, is then refused with nothing sent upstream.
net::awaitable<boost::system::error_code> Session::read_first_body_piece(
    http::request_parser<http::buffer_body>& parser) {
  // Beast waits for a CRLF after a chunk size; a chunk-size line ended by a bare LF would only
  // hang until the idle timeout, so it is refused at once when it is already buffered.
  if (parser.chunked()) {
    const std::string_view data(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    const auto nl = data.find('\n');
    if (nl != std::string_view::npos && (nl == 0 || data[nl - 1] != '\r')) {
      co_return http::error::bad_chunk;
    }
  }
  auto& body = parser.get().body();
  body.data = chunk().data();
  body.size = chunk_.size();
  beast::get_lowest_layer(stream_).expires_after(cfg_.idle_timeout);
  auto [ec, n] =
      co_await http::async_read(stream_, buffer_, parser, net::as_tuple(net::use_awaitable));
  if (ec == http::error::need_buffer) ec = {};
  if (!ec) preread_ = chunk_.size() - body.size;
  co_return ec;
}

net::awaitable<bool> Session::handshake() {
  auto& metrics = p_.services->metrics;
  const auto started = Clock::now();
  beast::get_lowest_layer(stream_).expires_after(cfg_.tls.handshake_timeout);
  auto [ec] =
      co_await stream_.async_handshake(ssl::stream_base::server, net::as_tuple(net::use_awaitable));
  SSL* ssl = stream_.native_handle();
  if (!ec) {
    if (!SSL_get0_peer_certificate(ssl)) {
      ec = net::error::access_denied;  // unreachable with FAIL_IF_NO_PEER_CERT
    }
  }
  if (ec) {
    const auto result = classify_handshake_failure(ec, ssl);
    metrics.handshake(result, seconds_since(started));
    spdlog::info("handshake failed conn={} listener={} peer={} reason={} detail=\"{}\"", id_,
                 cfg_.name, peer_, admin::to_string(result), ec.message());
    co_return false;
  }
  // A resumed session skipped certificate verification, and a status the verify path did not
  // have (first sight of a certificate checked with OCSP) is looked up now: either way the
  // chain's verdict is known before anything is forwarded.
  if (const auto& checker = p_.snapshot->revocation) {
    // Read before checking: data that changes meanwhile means another check at the next request.
    // A full handshake's verify callback read it before looking the chain up; so did a resumed
    // session's stamp, when it still holds.
    const auto checked = tls::revocation_checked_generation(ssl);
    const auto generation = checked != 0 ? checked : checker->generation();
    if ((SSL_session_reused(ssl) && checked == 0) || checker->may_defer()) {
      const auto verdict = co_await revocation_verdict(*checker);
      if (verdict.status != revocation::Status::good) {
        const auto result = verdict.status == revocation::Status::revoked
                                ? admin::HandshakeResult::revoked
                                : admin::HandshakeResult::revocation_unknown;
        metrics.handshake(result, seconds_since(started));
        spdlog::info(
            "client certificate refused after handshake conn={} peer={} reason={} "
            "resumed={}",
            id_, peer_, verdict.reason, SSL_session_reused(ssl) == 1);
        // The session this handshake made or resumed is not resumed again from the cache.
        SSL_CTX_remove_session(SSL_get_SSL_CTX(ssl), SSL_get_session(ssl));
        refusal_ = verdict.status == revocation::Status::revoked || verdict.reason.empty()
                       ? std::string_view("revoked")
                       : verdict.reason;
        co_return true;
      }
    }
    revocation_generation_ = generation;
    if (SSL_session_reused(ssl)) metrics.resumed_handshake(tls::resumed_under_stamp(ssl));
  }
  metrics.handshake(admin::HandshakeResult::ok, seconds_since(started));
  if (spdlog::should_log(spdlog::level::debug)) {
    spdlog::debug("handshake ok conn={} peer={} subject=\"{}\" serial={} resumed={}", id_, peer_,
                  identity().subject, identity().serial_hex, SSL_session_reused(ssl) == 1);
  }
  co_return true;
}

// The connection's chain checked against the current revocation data, waiting (without holding
// an io thread) for whatever the checker has to look up first.
net::awaitable<revocation::Verdict> Session::revocation_verdict(
    const revocation::Checker& checker) {
  SSL* ssl = stream_.native_handle();
  auto* trust = p_.listener->truststore->store();
  std::vector<revocation::CertPair> pending;
  const auto first = revocation::check_peer(checker, ssl, trust, &pending);
  if (first.status != revocation::Status::pending) co_return first;
  const auto executor = co_await net::this_coro::executor;
  auto initiation = [&checker, &pending, executor](auto handler) {
    auto shared = std::make_shared<decltype(handler)>(std::move(handler));
    checker.resolve(
        pending, [shared, executor] { net::post(executor, [shared] { std::move (*shared)(); }); });
  };
  co_await net::async_initiate<decltype(net::use_awaitable), void()>(std::move(initiation),
                                                                     net::use_awaitable);
  co_return revocation::check_peer(checker, ssl, trust);
}

net::awaitable<bool> Session::run() {
  if (!handle_) {
    if (!co_await handshake()) co_return false;
    handle_ = p_.worker->track(beast::get_lowest_layer(stream_));
  }
  for (;;) {
    if (parked_) {
      // Back from the park: the socket is readable, or holds the peer's close. Rarely, the
      // readiness was for bytes read before the park: then nothing is there, and the
      // connection goes back to it, its deadline unchanged.
      parked_ = false;
      const auto space = buffer_.prepare(4096);
      std::size_t n = 0;
      boost::system::error_code ec;  // an error is met again, and handled, by the next read
      if (!stream_.read_some_now(space, n, ec)) {
        buffer_.shrink_to_fit();
        parked_ = true;
        co_return true;
      }
      buffer_.commit(n);
    } else {
      // A draining gateway answers the request in progress, then closes; the first request of
      // a fresh connection is still served so that a handshake never ends in silence.
      if (!first_ && p_.services->draining.load(std::memory_order_relaxed)) break;
      (*handle_)->idle = true;
      const auto timeout = first_ ? cfg_.header_timeout : cfg_.idle_timeout;
      deadline_ = Clock::now() + timeout;
      if (buffer_.size() == 0) {
        // Between requests a connection waits parked, with no coroutine frame, parser, read
        // buffer or header deadline of its own. If nothing comes, the socket's expiry closes
        // it, as a header timeout with nothing received does.
        buffer_.shrink_to_fit();
        beast::get_lowest_layer(stream_).expires_after(timeout);
        parked_ = true;
        co_return true;
      }
    }
    const bool keep_alive = co_await exchange(*handle_, deadline_);
    first_ = false;
    if (!keep_alive) break;
  }

  beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(2));
  if (client_closes_ && buffer_.size() == 0) {
    // The client asked to close after this response and read, whole, has nothing left to
    // send but its close_notify: ours goes out and the connection closes, as NGINX and HAProxy
    // close. Otherwise (the gateway chose to close, or bytes it has not read may follow) the
    // client's close_notify is awaited, for 2 s at most, reading what comes before it: closing
    // with unread bytes makes the kernel answer with a reset, which can destroy the response
    // before the client has read it.
    co_await stream_.async_close_notify(net::as_tuple(net::use_awaitable));
  } else {
    co_await stream_.async_shutdown(net::as_tuple(net::use_awaitable));
  }
  co_return false;
}

// One request on the connection, from its header (whose first bytes may already be here) to
// the end of its response: whether the connection may carry another.
net::awaitable<bool> Session::exchange(Worker::Handle handle, Clock::time_point deadline) {
  http::request_parser<http::buffer_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(cfg_.max_header_bytes));
  parser.body_limit(boost::none);
  auto [ec, rejection] = co_await read_header_section(deadline);
  handle->idle = false;
  if (rejection) {
    Exchange ex;
    ex.reason = rejection->reason;
    p_.services->metrics.bad_request();
    auto body = json_error(rejection->status == http::status::request_header_fields_too_large
                               ? "header_too_large"
                               : "bad_request",
                           rejection->reason);
    co_await respond(static_cast<unsigned>(rejection->status), "application/json", std::move(body),
                     false, ex);
    log_exchange(ex);
    co_return false;
  }
  if (!ec) {
    // The whole header section is buffered: it is parsed in place, as Beast's read would, but
    // without an asynchronous operation (and its trip through the scheduler).
    buffer_.consume(parser.put(buffer_.data(), ec));
    if (ec == http::error::need_more) {
      ec = {};
      std::tie(ec, std::ignore) = co_await http::async_read_header(
          stream_, buffer_, parser, net::as_tuple(net::use_awaitable));
    }
  }
  if (ec) {
    // A closed or idle connection is the normal end of keep-alive, not an error.
    if (ec == http::error::end_of_stream || ec == ssl::error::stream_truncated ||
        ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof || buffer_.size() == 0) {
      if (ec == beast::error::timeout && buffer_.size() > 0) {
        Exchange ex;
        ex.reason = "header_timeout";
        co_await respond(408, "text/plain; charset=utf-8", "request header timeout\n", false, ex);
      }
      co_return false;
    }
    Exchange ex;
    ex.reason = parse_error_reason(ec);
    p_.services->metrics.bad_request();
    const bool too_large = ec == http::error::header_limit;
    auto body = json_error(too_large ? "header_too_large" : "bad_request", ex.reason);
    co_await respond(too_large ? 431 : 400, "application/json", std::move(body), false, ex);
    log_exchange(ex);
    co_return false;
  }
  Exchange ex;
  ex.method = std::string(parser.get().method_string());
  const auto target = parser.get().target();
  ex.path = std::string(target.substr(0, target.find('?')));
  const bool client_keep_alive = parser.get().keep_alive();  // serve() may move the request
  const bool keep_alive = co_await serve(parser, ex);
  client_closes_ = !client_keep_alive && parser.is_done();
  log_exchange(ex);
  co_return keep_alive;
}

// Decides what to do with one request whose header has been read. Returns whether the
// connection may carry another request.
net::awaitable<bool> Session::serve(http::request_parser<http::buffer_body>& parser, Exchange& ex) {
  auto& req = parser.get();
  const bool body_pending = !parser.is_done();
  const bool keep_alive = req.keep_alive() && !body_pending;  // refusals do not read the body

  if (!refusal_.empty()) {
    ex.reason = std::string(refusal_);
    auto body = json_error("forbidden", ex.reason);
    co_await respond(403, "application/json", std::move(body), false, ex);
    co_return false;
  }

  // New revocation data since this connection was admitted: check its chain again, so a
  // revoked client's keep-alive connection carries no further request.
  if (const auto& checker = p_.snapshot->revocation;
      checker && checker->generation() != revocation_generation_) {
    const auto generation = checker->generation();
    const auto verdict = co_await revocation_verdict(*checker);
    if (verdict.status != revocation::Status::good) {
      ex.reason = verdict.status == revocation::Status::revoked || verdict.reason.empty()
                      ? "revoked"
                      : std::string(verdict.reason);
      auto body = json_error("forbidden", ex.reason);
      co_await respond(403, "application/json", std::move(body), false, ex);
      co_return false;
    }
    revocation_generation_ = generation;
  }

  if (auto rejection = validate_request(req, sni())) {
    p_.services->metrics.bad_request();
    ex.reason = rejection->reason;
    auto body = json_error("bad_request", rejection->reason);
    co_await respond(static_cast<unsigned>(rejection->status), "application/json", std::move(body),
                     false, ex);
    co_return false;
  }

  const auto host = host_of(req[http::field::host]);
  const auto* route = select_route(cfg_, host.empty() ? sni() : host, ex.path);
  if (!route) {
    ex.reason = "no_route";
    auto body = json_error("not_found", "no_route");
    co_await respond(404, "application/json", std::move(body), keep_alive, ex);
    co_return keep_alive;
  }
  ex.route_upstream = route->upstream;

  const auto decision = authz::authorize(*route, identity());
  if (!decision.allowed) {
    ex.reason = decision.reason;
    const auto label = route_label(*route);
    p_.services->metrics.authz_denied(cfg_.name, label, decision.reason);
    spdlog::info("request denied conn={} listener={} route={} reason={} subject=\"{}\" serial={}",
                 id_, cfg_.name, label, decision.reason, identity().subject, identity().serial_hex);
    auto body = json_error("forbidden", decision.reason);
    co_await respond(403, "application/json", std::move(body), keep_alive, ex);
    co_return keep_alive;
  }

  if (route->max_body_bytes != 0) {
    const auto length = parser.content_length();
    if (length && *length > route->max_body_bytes) {
      ex.reason = "body_too_large";
      co_await respond(413, "text/plain; charset=utf-8", "request body too large\n", false, ex);
      co_return false;
    }
    parser.body_limit(route->max_body_bytes);
  }
  preread_.reset();
  if (!parser.is_done()) {
    // A client that asked for 100 Continue sends nothing until it gets it.
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      http::response<http::empty_body> interim{http::status::continue_, 11};
      beast::get_lowest_layer(stream_).expires_after(cfg_.idle_timeout);
      auto [ec, n] =
          co_await http::async_write(stream_, interim, net::as_tuple(net::use_awaitable));
      if (ec) co_return false;
    }
    if (const auto ec = co_await read_first_body_piece(parser)) {
      ex.reason = ec == http::error::body_limit ? "body_too_large" : "client_body_error";
      if (ec == http::error::end_of_stream || ec == ssl::error::stream_truncated ||
          ec == beast::error::timeout || ec == net::error::eof) {
        co_return false;
      }
      p_.services->metrics.bad_request();
      const bool too_large = ec == http::error::body_limit;
      auto body = json_error(too_large ? "body_too_large" : "bad_request",
                             too_large ? "body_too_large" : "bad_body_framing");
      co_await respond(too_large ? 413 : 400, "application/json", std::move(body), false, ex);
      co_return false;
    }
  }
  const bool keep = co_await forward(parser, *route, ex);
  co_return keep;
}

net::awaitable<bool> Session::forward(http::request_parser<http::buffer_body>& parser,
                                      const config::Route& route, Exchange& ex) {
  auto& metrics = p_.services->metrics;
  auto& req = parser.get();
  const auto& upstream = p_.snapshot->config->upstreams.at(route.upstream);
  const bool has_body = !parser.is_done();  // body bytes still to be read from the client
  // Whether the request has a body at all, read already or not: such a request is never sent
  // twice.
  const bool carries_body = parser.chunked() || parser.content_length().value_or(0) > 0;
  const bool client_keep_alive = req.keep_alive();
  const bool is_head = req.method() == http::verb::head;
  const auto client_version = req.version();
  const bool websocket = !has_body && is_websocket_upgrade(req);

  identity();
  const auto added_lines = prepare_upstream_request(req, client_ip(), *identity_lines_);
  if (websocket) set_websocket_upgrade(req);
  if (parser.chunked()) req.chunked(true);

  const upstream::TlsClientContext* tls = nullptr;
  if (const auto found = p_.snapshot->upstream_tls.find(route.upstream);
      found != p_.snapshot->upstream_tls.end()) {
    tls = found->second.get();
  }
  std::optional<upstream::Lease> lease;
  std::optional<http::response_parser<http::buffer_body>> response_parser;
  const auto fresh_response_parser = [&] {
    response_parser.emplace();
    response_parser->body_limit(boost::none);
    response_parser->header_limit(64 * 1024);
    if (is_head) response_parser->skip(true);
  };
  beast::flat_buffer upstream_buffer;
  // Room for a typical response header and body in one read: Beast reads into whatever the
  // buffer has spare, at least 512 bytes, so an empty buffer cost three reads per small response.
  upstream_buffer.reserve(upstream_read_size);
  bool request_sent = false;

  // A second attempt is made only when no response byte has arrived, and only for an idempotent
  // request without a body: after a pooled connection the upstream closed just as it was
  // reused, and, once, on another endpoint.
  const bool retry_safe = upstream.retry && !carries_body && is_retry_safe(req.method()) &&
                          upstream.endpoints.size() > 1;
  bool retried_elsewhere = false;
  std::string avoid;
  const auto may_retry = [&] {
    if (lease->reused && !carries_body && is_retry_safe(req.method())) return true;
    if (!retry_safe || retried_elsewhere) return false;
    retried_elsewhere = true;
    avoid = lease->endpoint;
    metrics.upstream_event(upstream.name, lease->endpoint, "retried");
    spdlog::info("retrying on another endpoint conn={} upstream={} failed_endpoint={}", id_,
                 upstream.name, lease->endpoint);
    return true;
  };
  for (int attempt = 0; attempt < 3 && !request_sent; ++attempt) {
    boost::system::error_code connect_error;
    try {
      // The first attempt of a request that may be sent again takes a recently pooled
      // connection unchecked; a retry checks every one it takes.
      lease.emplace(co_await p_.worker->pool().acquire(
          upstream, p_.services->upstream_health, tls, avoid,
          attempt == 0 && !carries_body && is_retry_safe(req.method())));
    } catch (const boost::system::system_error& e) {
      connect_error = e.code();
    }
    if (connect_error) {
      const auto failure = classify_upstream_failure(
          connect_error, "upstream_connect_timeout",
          {admin::UpstreamError::connect_failed, "upstream_connect_failed"});
      metrics.upstream_error(failure.kind);
      ex.reason = failure.reason;
      spdlog::warn("upstream connect failed conn={} upstream={} error=\"{}\"", id_, upstream.name,
                   connect_error.message());
      co_await respond(502, "text/plain; charset=utf-8", "502 Bad Gateway: upstream unavailable\n",
                       client_keep_alive && !has_body, ex);
      co_return client_keep_alive && !has_body;
    }
    ex.endpoint = lease->endpoint;
    // HTTP/1.0 allows a request without Host; it goes upstream as HTTP/1.1, which does not.
    if (req[http::field::host].empty())
      req.set(http::field::host, sni().empty() ? std::string_view(ex.endpoint) : sni());

    auto sent =
        co_await relay_message(stream_, buffer_, parser, lease->stream(), true, cfg_.idle_timeout,
                               upstream.response_timeout, chunk(), preread_, added_lines);
    ex.bytes_in = sent.body_bytes;
    if (sent.read_error) {
      // The client sent a broken body or went away: nothing sensible can follow on this
      // connection, and the upstream connection holds half a request.
      ex.reason = "client_body_error";
      if (sent.read_error != http::error::end_of_stream &&
          sent.read_error != ssl::error::stream_truncated &&
          sent.read_error != beast::error::timeout) {
        metrics.bad_request();
        co_await respond(sent.read_error == http::error::body_limit ? 413 : 400,
                         "text/plain; charset=utf-8",
                         sent.read_error == http::error::body_limit ? "request body too large\n"
                                                                    : "malformed request body\n",
                         false, ex);
      }
      co_return false;
    }
    if (sent.write_error) {
      if (may_retry()) {
        lease.reset();
        continue;
      }
      metrics.upstream_error(sent.write_error == beast::error::timeout
                                 ? admin::UpstreamError::timeout
                                 : admin::UpstreamError::reset);
      ex.reason = "upstream_write_failed";
      co_await respond(502, "text/plain; charset=utf-8", "502 Bad Gateway: upstream failed\n",
                       false, ex);
      co_return false;
    }

    // Interim 1xx answers (other than 101) are consumed here; the client has had its own
    // 100 Continue already.
    fresh_response_parser();
    for (;;) {
      beast::get_lowest_layer(lease->stream()).expires_after(upstream.response_timeout);
      auto [ec, n] = co_await http::async_read_header(
          lease->stream(), upstream_buffer, *response_parser, net::as_tuple(net::use_awaitable));
      if (ec) {
        if (ec != beast::error::timeout && upstream_buffer.size() == 0 && may_retry()) {
          lease.reset();
          break;
        }
        const bool timeout = ec == beast::error::timeout;
        // A TLS upstream that refuses the gateway's (missing) certificate says so with an
        // alert after a TLS 1.3 handshake has completed on this side: it arrives here.
        const auto failure = classify_upstream_failure(
            ec, "upstream_timeout", {admin::UpstreamError::bad_response, "upstream_bad_response"});
        metrics.upstream_error(failure.kind);
        ex.reason = failure.reason;
        spdlog::warn("upstream response failed conn={} upstream={} endpoint={} error=\"{}\"", id_,
                     upstream.name, ex.endpoint, ec.message());
        if (timeout) {
          co_await respond(504, "text/plain; charset=utf-8",
                           "504 Gateway Timeout: upstream did not answer in time\n", false, ex);
        } else {
          co_await respond(502, "text/plain; charset=utf-8",
                           "502 Bad Gateway: invalid upstream response\n", false, ex);
        }
        co_return false;
      }
      const auto status = response_parser->get().result_int();
      if (status >= 100 && status < 200 && status != 101) {
        fresh_response_parser();
        continue;
      }
      request_sent = true;
      break;
    }
  }
  if (!request_sent || !lease) {
    metrics.upstream_error(admin::UpstreamError::reset);
    ex.reason = "upstream_closed";
    co_await respond(502, "text/plain; charset=utf-8", "502 Bad Gateway: upstream failed\n", false,
                     ex);
    co_return false;
  }

  auto& res = response_parser->get();
  const auto status = res.result_int();
  if (status == 101) {
    if (!websocket) {
      // Switching protocols on a request that did not ask for it cannot be relayed.
      metrics.upstream_error(admin::UpstreamError::bad_response);
      ex.reason = "upstream_unrequested_upgrade";
      co_await respond(502, "text/plain; charset=utf-8",
                       "502 Bad Gateway: invalid upstream response\n", false, ex);
      co_return false;
    }
    prepare_client_response(res);
    set_websocket_upgrade(res);
    res.version(11);
    ex.status = status;
    auto switched =
        co_await relay_message(lease->stream(), upstream_buffer, *response_parser, stream_, false,
                               upstream.response_timeout, cfg_.idle_timeout, chunk());
    if (!switched) {
      ex.reason = "client_gone";
      co_return false;
    }
    co_await tunnel(lease->stream(), upstream_buffer, ex);
    co_return false;
  }
  const bool upstream_keep_alive = res.keep_alive();
  const bool bodyless = is_head || status == 204 || status == 304 || status == 101;
  bool keep_alive = client_keep_alive && !p_.services->draining.load(std::memory_order_relaxed);
  prepare_client_response(res);
  if (!bodyless) {
    if (response_parser->chunked()) {
      res.chunked(true);
    } else if (!response_parser->content_length()) {
      // A body delimited by the upstream closing: re-frame it as chunked for HTTP/1.1 clients,
      // and close after it for HTTP/1.0 ones.
      if (client_version >= 11) {
        res.chunked(true);
      } else {
        keep_alive = false;
      }
    }
  }
  res.version(client_version >= 11 ? 11 : 10);
  res.keep_alive(keep_alive);
  ex.status = status;

  auto received =
      co_await relay_message(lease->stream(), upstream_buffer, *response_parser, stream_, !bodyless,
                             upstream.response_timeout, cfg_.idle_timeout, chunk(), std::nullopt,
                             {}, SmallBody::with_the_header, !keep_alive);
  ex.bytes_out = received.body_bytes;
  if (received.read_error) {
    const bool timeout = received.read_error == beast::error::timeout;
    metrics.upstream_error(timeout ? admin::UpstreamError::timeout : admin::UpstreamError::reset);
    ex.reason = timeout && !received.header_written ? "upstream_timeout" : "upstream_body_error";
    // Nothing of the response went out yet (a small body is held for its header): the client
    // can still be told. Once it is under way, the only honest signal left is to cut the
    // connection.
    if (!received.header_written) {
      co_await respond(timeout ? 504 : 502, "text/plain; charset=utf-8",
                       timeout ? "504 Gateway Timeout: upstream did not answer in time\n"
                               : "502 Bad Gateway: upstream failed\n",
                       false, ex);
    }
    co_return false;
  }
  if (received.write_error) {
    ex.reason = "client_gone";
    co_return false;
  }
  if (upstream_keep_alive && response_parser->is_done()) {
    p_.worker->pool().release(upstream, std::move(*lease));
  }
  co_return keep_alive;
}

// Relays raw bytes both ways after a 101 until either side closes, or no byte has moved either
// way for the listener's idle timeout. Bytes each side sent early (already buffered) go first.
net::awaitable<void> Session::tunnel(upstream::UpstreamStream& upstream,
                                     beast::flat_buffer& upstream_buffer, Exchange& ex) {
  using namespace net::experimental::awaitable_operators;
  auto& metrics = p_.services->metrics;
  metrics.tunnel_opened();
  auto& client = beast::get_lowest_layer(stream_);
  // The watchdog below is the deadline: per-stream expiry would close a tunnel that is busy
  // in one direction only.
  auto& server = beast::get_lowest_layer(upstream);
  client.expires_never();
  server.expires_never();
  auto last_activity = Clock::now();
  bool stopped = false;
  bool idle = false;
  net::steady_timer watchdog(stream_.get_executor());
  // Everything here runs on the connection's one thread: a flag checked before each operation
  // and a cancel of the pending ones ends all three loops.
  const auto stop = [&] {
    if (stopped) return;
    stopped = true;
    boost::system::error_code ignored;
    client.socket().cancel(ignored);
    server.socket().cancel(ignored);
    watchdog.cancel();
  };
  const auto pump = [&](auto& from, beast::flat_buffer& early, auto& to,
                        std::uint64_t& counted) -> net::awaitable<void> {
    if (early.size() > 0) {
      auto [ec, n] = co_await net::async_write(to, early.data(), net::as_tuple(net::use_awaitable));
      counted += n;
      early.consume(early.size());
      if (ec) {
        stop();
        co_return;
      }
    }
    std::vector<char> piece(16 * 1024);
    while (!stopped) {
      auto [rec, rn] =
          co_await from.async_read_some(net::buffer(piece), net::as_tuple(net::use_awaitable));
      if (rec || stopped) break;
      last_activity = Clock::now();
      auto [wec, wn] = co_await net::async_write(to, net::buffer(piece.data(), rn),
                                                 net::as_tuple(net::use_awaitable));
      if (wec) break;
      counted += wn;
      last_activity = Clock::now();
    }
    stop();
  };
  const auto watch = [&]() -> net::awaitable<void> {
    while (!stopped) {
      watchdog.expires_at(last_activity + cfg_.idle_timeout);
      co_await watchdog.async_wait(net::as_tuple(net::use_awaitable));
      if (stopped) break;
      if (Clock::now() >= last_activity + cfg_.idle_timeout) {
        idle = true;
        stop();
      }
    }
  };
  co_await (pump(stream_, buffer_, upstream, ex.bytes_in) &&
            pump(upstream, upstream_buffer, stream_, ex.bytes_out) && watch());
  metrics.tunnel_closed(idle);
  if (idle) ex.reason = "tunnel_idle_timeout";
  spdlog::debug("tunnel closed conn={} endpoint={} bytes_in={} bytes_out={} idle_timeout={}", id_,
                ex.endpoint, ex.bytes_in, ex.bytes_out, idle);
  boost::system::error_code ignored;
  server.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

net::awaitable<void> Session::respond(unsigned status, std::string_view content_type,
                                      std::string body, bool keep_alive, Exchange& ex) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::server, "portcullis");
  res.set(http::field::content_type, content_type);
  res.body() = std::move(body);
  res.keep_alive(keep_alive);
  res.prepare_payload();
  ex.status = status;
  ex.bytes_out = res.body().size();
  beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(10));
  if (!keep_alive) stream_.close_after_this();  // it leaves with the close_notify
  co_await http::async_write(stream_, res, net::as_tuple(net::use_awaitable));
}

void Session::log_exchange(const Exchange& ex) {
  const double seconds = seconds_since(ex.started);
  p_.services->metrics.request(static_cast<int>(ex.status), seconds);
  if (!p_.services->access_log) return;
  const auto now = std::chrono::system_clock::now();
  boost::json::object line{
      {"time", fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::seconds>(now))},
      {"conn", id_},
      {"listener", cfg_.name},
      {"peer", peer_},
      {"subject", identity().subject},
      {"serial", identity().serial_hex},
      {"fingerprint", identity().fingerprint_sha256},
      {"method", ex.method},
      {"path", ex.path},
      {"status", ex.status},
      {"bytes_in", ex.bytes_in},
      {"bytes", ex.bytes_out},
      {"upstream", ex.route_upstream},
      {"endpoint", ex.endpoint},
      {"duration_ms", std::round(seconds * 1e6) / 1e3},
  };
  if (!ex.reason.empty()) line["reason"] = ex.reason;
  p_.services->access_log->info(boost::json::serialize(line));
}

// Counts the connection closed, once, when the last owner of it goes.
class ConnectionCount {
 public:
  ConnectionCount(Services& services, std::shared_ptr<std::atomic<int>> listener)
      : services_(&services), listener_(std::move(listener)) {}
  ConnectionCount(ConnectionCount&& other) noexcept
      : services_(std::exchange(other.services_, nullptr)), listener_(std::move(other.listener_)) {}
  ConnectionCount& operator=(ConnectionCount&&) = delete;
  ~ConnectionCount() {
    if (!services_) return;
    services_->metrics.connection_closed();
    if (listener_) listener_->fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  Services* services_;
  std::shared_ptr<std::atomic<int>> listener_;
};

// A connection's state, on the heap so that it outlives the coroutine serving it: an idle
// connection is only this and the readiness wait that owns it.
struct Connection {
  Connection(ConnectionCount counted, tcp::socket socket, SessionParams params, std::string peer)
      : count(std::move(counted)),
        stream(std::move(socket), *params.listener->ssl),
        session(std::move(params), stream, std::move(peer)) {}

  ConnectionCount count;  // destroyed last, once the socket is closed
  ClientStream stream;
  Session session;
};

void park(std::unique_ptr<Connection> connection);

// Serves until the connection closes or goes idle; an idle one is parked.
net::awaitable<void> serve(std::unique_ptr<Connection> connection) {
  bool idle = false;
  try {
    idle = co_await connection->session.run();
  } catch (const std::exception& e) {
    spdlog::error("session ended by unexpected error: {}", e.what());
  }
  if (idle) park(std::move(connection));
}

void park(std::unique_ptr<Connection> connection) {
  auto& stream = connection->stream;
  stream.wait_readable([connection = std::move(connection)](boost::system::error_code ec) mutable {
    // An error is the idle deadline or a drain, which closed the socket: the connection ends
    // here.
    if (ec) return;
    auto executor = connection->stream.get_executor();
    net::co_spawn(executor, serve(std::move(connection)), net::detached);
  });
}

}  // namespace

net::awaitable<void> run_client_session(tcp::socket socket, tcp::endpoint remote,
                                        SessionParams params) {
  ConnectionCount count(*params.services, params.listener_connections);
  const auto ip = remote.address().to_string();
  auto peer =
      (remote.address().is_v6() ? "[" + ip + "]" : ip) + ":" + std::to_string(remote.port());
  co_await serve(std::make_unique<Connection>(std::move(count), std::move(socket),
                                              std::move(params), std::move(peer)));
}

}  // namespace portcullis::proxy
