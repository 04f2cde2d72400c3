#include "portcullis/echo/echo_server.hpp"

#include "portcullis/tls/openssl.hpp"
#include "portcullis/tls/peer_identity.hpp"

#include <fmt/format.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>

#include <charconv>
#include <iostream>
#include <thread>
#include <vector>

namespace portcullis::echo {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

struct EchoServer::State {
  explicit State(net::any_io_executor ex) : acceptor(ex) {}
  tcp::acceptor acceptor;
  std::unique_ptr<net::ssl::context> ssl;  // set in TLS mode
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> connections{0};     // that carried request bytes, /__stats aside
  std::atomic<std::uint64_t> bytes_received{0};  // parsed request bytes, plus any left unparsed
};

namespace {

constexpr std::size_t piece = 64 * 1024;

// The byte pattern of /bytes/N, laid out so any offset is a pointer into it.
const std::vector<char>& pattern() {
  static const std::vector<char> bytes = [] {
    std::vector<char> b(piece + 251);
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>(i % 251);
    return b;
  }();
  return bytes;
}

std::optional<std::uint64_t> number_after(std::string_view target, std::string_view prefix) {
  if (target.substr(0, prefix.size()) != prefix) return std::nullopt;
  auto rest = target.substr(prefix.size());
  rest = rest.substr(0, rest.find('?'));
  std::uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), value);
  if (ec != std::errc{} || ptr != rest.data() + rest.size()) return std::nullopt;
  return value;
}

std::string hex(const unsigned char* d, unsigned n) {
  std::string out;
  for (unsigned i = 0; i < n; ++i) out += fmt::format("{:02x}", d[i]);
  return out;
}

template <class Stream>
net::awaitable<bool> send_bytes(Stream& stream, unsigned version, bool keep_alive,
                                std::uint64_t size, bool chunked) {
  http::response<http::buffer_body> res{http::status::ok, version};
  res.set(http::field::content_type, "application/octet-stream");
  if (chunked) {
    res.chunked(true);
  } else {
    res.content_length(size);
  }
  res.keep_alive(keep_alive);
  http::response_serializer<http::buffer_body> sr{res};
  // The header goes out with the first piece of the body, in one write.
  std::uint64_t sent = 0;
  do {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(piece, size - sent));
    res.body().data = n ? const_cast<char*>(pattern().data() + sent % 251) : nullptr;
    res.body().size = n;
    sent += n;
    res.body().more = sent < size;
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(60));
    auto [ec, wn] = co_await http::async_write(stream, sr, net::as_tuple(net::use_awaitable));
    if (ec == http::error::need_buffer) ec = {};
    if (ec) co_return false;
  } while (!sr.is_done());
  co_return true;
}

// GET /ws with a WebSocket handshake: answers 101, then sends every message back as it came
// (text or binary) until the client closes.
net::awaitable<void> serve_websocket(beast::tcp_stream stream,
                                     const http::request<http::buffer_body>& req) {
  // The websocket stream keeps its own timeouts; the tcp_stream's must be off.
  stream.expires_never();
  beast::websocket::stream<beast::tcp_stream> ws(std::move(stream));
  ws.set_option(beast::websocket::stream_base::timeout::suggested(beast::role_type::server));
  auto [aec] = co_await ws.async_accept(req, net::as_tuple(net::use_awaitable));
  if (aec) co_return;
  beast::flat_buffer message;
  for (;;) {
    auto [rec, rn] = co_await ws.async_read(message, net::as_tuple(net::use_awaitable));
    if (rec) co_return;
    ws.text(ws.got_text());
    auto [wec, wn] = co_await ws.async_write(message.data(), net::as_tuple(net::use_awaitable));
    if (wec) co_return;
    message.consume(message.size());
  }
}

// What the echo reports about its TLS connection: SNI received and the client's subject.
struct TlsInfo {
  bool tls = false;
  std::string server_name;
  std::string client_subject;
};

template <class Stream>
net::awaitable<void> serve(std::shared_ptr<EchoServer::State> state, Stream& stream,
                           const TlsInfo& tls_info) {
  beast::flat_buffer buffer;
  std::vector<char> chunk(piece);
  bool counted = false;  // /__stats connections are not counted
  for (;;) {
    http::request_parser<http::buffer_body> parser;
    parser.header_limit(64 * 1024);
    parser.body_limit(boost::none);
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(120));
    auto [ec, n] =
        co_await http::async_read_header(stream, buffer, parser, net::as_tuple(net::use_awaitable));
    if (ec) {
      state->bytes_received.fetch_add(n, std::memory_order_relaxed);
      break;
    }
    auto& req = parser.get();
    const std::string target(req.target());
    const bool stats = target == "/__stats";
    if (!stats) {
      state->requests.fetch_add(1, std::memory_order_relaxed);
      state->bytes_received.fetch_add(n, std::memory_order_relaxed);
      if (!counted) state->connections.fetch_add(1, std::memory_order_relaxed);
      counted = true;
    }

    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      if (target == "/ws" && beast::websocket::is_upgrade(req)) {
        co_await serve_websocket(std::move(stream), req);
        co_return;
      }
    }

    boost::json::array headers;
    for (const auto& f : req) headers.push_back(boost::json::array{f.name_string(), f.value()});

    tls::EvpMdCtxPtr md(EVP_MD_CTX_new());
    EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
    std::uint64_t length = 0;
    bool body_ok = true;
    while (!parser.is_done()) {
      req.body().data = chunk.data();
      req.body().size = chunk.size();
      beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(120));
      auto [rec, rn] =
          co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
      if (rec == http::error::need_buffer) rec = {};
      if (rec) {
        body_ok = false;
        break;
      }
      const auto got = chunk.size() - req.body().size;
      state->bytes_received.fetch_add(got, std::memory_order_relaxed);
      EVP_DigestUpdate(md.get(), chunk.data(), got);
      length += got;
    }
    if (!body_ok) break;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned digest_len = 0;
    EVP_DigestFinal_ex(md.get(), digest, &digest_len);
    const bool keep_alive = req.keep_alive();
    const auto version = req.version();

    if (req.method() == http::verb::get) {
      if (auto size = number_after(target, "/bytes/")) {
        if (!co_await send_bytes(stream, version, keep_alive, *size, false) || !keep_alive) break;
        continue;
      }
      if (auto size = number_after(target, "/chunked-bytes/")) {
        if (!co_await send_bytes(stream, version, keep_alive, *size, true) || !keep_alive) break;
        continue;
      }
    }
    if (auto ms = number_after(target, "/delay/")) {
      net::steady_timer timer(stream.get_executor(), std::chrono::milliseconds(*ms));
      co_await timer.async_wait(net::as_tuple(net::use_awaitable));
    }
    unsigned status = 200;
    if (auto code = number_after(target, "/status/"); code && *code >= 200 && *code <= 599) {
      status = static_cast<unsigned>(*code);
    }

    http::response<http::string_body> res{static_cast<http::status>(status), version};
    res.set(http::field::content_type, "application/json");
    if (stats) {
      boost::json::object counters;
      counters["requests"] = state->requests.load();
      counters["connections"] = state->connections.load();
      counters["bytes_received"] = state->bytes_received.load();
      res.body() = boost::json::serialize(counters) + "\n";
    } else {
      boost::json::object body{
          {"method", std::string(req.method_string())},
          {"target", target},
          {"version", version == 11 ? "HTTP/1.1" : "HTTP/1.0"},
          {"headers", std::move(headers)},
          {"body_length", length},
          {"body_sha256", hex(digest, digest_len)},
          {"tls", tls_info.tls},
          {"tls_server_name", tls_info.server_name},
          {"client_certificate", tls_info.client_subject},
      };
      res.body() = boost::json::serialize(body) + "\n";
    }
    res.keep_alive(keep_alive);
    res.prepare_payload();
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(60));
    auto [wec, wn] = co_await http::async_write(stream, res, net::as_tuple(net::use_awaitable));
    if (wec || !keep_alive) break;
  }
  if (buffer.size() > 0) {
    state->bytes_received.fetch_add(buffer.size(), std::memory_order_relaxed);
    if (!counted) state->connections.fetch_add(1, std::memory_order_relaxed);
  }
  boost::system::error_code ignored;
  beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
}

net::awaitable<void> serve_connection(std::shared_ptr<EchoServer::State> state,
                                      tcp::socket socket) {
  if (!state->ssl) {
    // A named object, not a temporary: GCC 12 destroys temporaries bound to coroutine
    // parameters twice.
    const TlsInfo plain;
    beast::tcp_stream stream(std::move(socket));
    co_await serve(state, stream, plain);
    co_return;
  }
  beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *state->ssl);
  beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
  auto [ec] = co_await stream.async_handshake(net::ssl::stream_base::server,
                                              net::as_tuple(net::use_awaitable));
  if (ec) co_return;
  TlsInfo info;
  info.tls = true;
  if (const char* name = SSL_get_servername(stream.native_handle(), TLSEXT_NAMETYPE_host_name))
    info.server_name = name;
  if (const auto peer = tls::extract_peer_identity(stream.native_handle()))
    info.client_subject = peer->subject;
  co_await serve(state, stream, info);
}

net::awaitable<void> accept_loop(std::shared_ptr<EchoServer::State> state) {
  for (;;) {
    auto [ec, socket] = co_await state->acceptor.async_accept(net::as_tuple(net::use_awaitable));
    if (ec == net::error::operation_aborted || !state->acceptor.is_open()) co_return;
    if (ec) {
      // Out of descriptors and similar: pause rather than spin until they are back.
      net::steady_timer pause(state->acceptor.get_executor(), std::chrono::milliseconds(50));
      co_await pause.async_wait(net::as_tuple(net::use_awaitable));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    net::co_spawn(state->acceptor.get_executor(), serve_connection(state, std::move(socket)),
                  net::detached);
  }
}

}  // namespace

EchoServer::EchoServer(net::any_io_executor executor, const config::HostPort& address,
                       const EchoTls& tls)
    : state_(std::make_shared<State>(executor)) {
  try {
    if (!tls.certificate.empty()) {
      state_->ssl = std::make_unique<net::ssl::context>(net::ssl::context::tls_server);
      state_->ssl->use_certificate_chain_file(tls.certificate);
      state_->ssl->use_private_key_file(tls.private_key, net::ssl::context::pem);
      if (!tls.client_ca.empty()) {
        state_->ssl->load_verify_file(tls.client_ca);
        state_->ssl->set_verify_mode(net::ssl::verify_peer | net::ssl::verify_fail_if_no_peer_cert);
      }
    }
    const tcp::endpoint endpoint(net::ip::make_address(address.host), address.port);
    state_->acceptor.open(endpoint.protocol());
    state_->acceptor.set_option(net::socket_base::reuse_address(true));
    state_->acceptor.bind(endpoint);
    state_->acceptor.listen();
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("echo upstream {}: {}", address.to_string(), e.what()));
  }
}

EchoServer::~EchoServer() {
  stop();
}

void EchoServer::start() {
  net::co_spawn(state_->acceptor.get_executor(), accept_loop(state_), net::detached);
}

void EchoServer::stop() {
  boost::system::error_code ignored;
  state_->acceptor.close(ignored);
}

std::uint16_t EchoServer::port() const noexcept {
  boost::system::error_code ec;
  const auto endpoint = state_->acceptor.local_endpoint(ec);
  return ec ? 0 : endpoint.port();
}

std::uint64_t EchoServer::requests() const noexcept {
  return state_->requests.load();
}

int run_echo_upstream(const std::string& listen_address, int threads, const EchoTls& tls) {
  const auto colon = listen_address.rfind(':');
  if (colon == std::string::npos) {
    std::cerr << "echo-upstream: --listen needs HOST:PORT\n";
    return 2;
  }
  config::HostPort address;
  address.host = listen_address.substr(0, colon);
  if (!address.host.empty() && address.host.front() == '[')
    address.host = address.host.substr(1, address.host.size() - 2);
  address.port = static_cast<std::uint16_t>(std::stoi(listen_address.substr(colon + 1)));
  net::io_context io;
  try {
    EchoServer server(io.get_executor(), address, tls);
    server.start();
    net::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](boost::system::error_code, int) { io.stop(); });
    std::cerr << "echo upstream listening on " << address.host << ":" << server.port() << std::endl;
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
    io.run();
    for (auto& t : pool) t.join();
  } catch (const std::exception& e) {
    std::cerr << "echo-upstream: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace portcullis::echo
