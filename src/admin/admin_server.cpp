#include "portcullis/admin/admin_server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <list>

namespace portcullis::admin {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

struct AdminServer::State {
  State(net::any_io_executor ex, Handlers h) : acceptor(ex), handlers(std::move(h)) {}
  tcp::acceptor acceptor;
  Handlers handlers;
  std::list<beast::tcp_stream*> connections;
  bool stopped = false;
};

Response handle_admin_request(const Handlers& handlers, std::string_view method,
                              std::string_view target) {
  const auto path = target.substr(0, target.find('?'));
  if (const auto it = handlers.post.find(std::string(path)); it != handlers.post.end()) {
    if (method != "POST") return Response{405, "text/plain; charset=utf-8", "use POST\n"};
    return it->second();
  }
  const bool get = method == "GET" || method == "HEAD";
  auto only_get = [&](auto&& make) -> Response {
    if (!get) return Response{405, "text/plain; charset=utf-8", "use GET\n"};
    return make();
  };
  if (path == "/healthz")
    return only_get([] { return Response{200, "text/plain; charset=utf-8", "ok\n"}; });
  if (path == "/readyz") {
    return only_get([&] {
      return handlers.ready && handlers.ready()
                 ? Response{200, "text/plain; charset=utf-8", "ready\n"}
                 : Response{503, "text/plain; charset=utf-8", "not ready\n"};
    });
  }
  if (path == "/metrics") {
    return only_get([&] {
      return Response{200, "text/plain; version=0.0.4; charset=utf-8",
                      handlers.metrics ? handlers.metrics() : ""};
    });
  }
  if (path == "/status") {
    return only_get([&] {
      return Response{200, "application/json",
                      handlers.status_json ? handlers.status_json() : "{}\n"};
    });
  }
  return Response{404, "text/plain; charset=utf-8", "not found\n"};
}

namespace {

net::awaitable<void> serve(std::shared_ptr<AdminServer::State> state, tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  state->connections.push_back(&stream);
  const auto self = std::prev(state->connections.end());
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(8 * 1024);
    parser.body_limit(64 * 1024);
    stream.expires_after(std::chrono::seconds(10));
    auto [ec, n] =
        co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
    if (ec) break;
    const auto& req = parser.get();
    Response r;
    try {
      r = handle_admin_request(state->handlers, req.method_string(), req.target());
    } catch (const std::exception& e) {
      spdlog::error("admin {} {}: {}", std::string(req.method_string()), std::string(req.target()),
                    e.what());
      r = Response{500, "text/plain; charset=utf-8", "internal error\n"};
    }
    http::response<http::string_body> res{static_cast<http::status>(r.status), req.version()};
    res.set(http::field::server, "portcullis-admin");
    res.set(http::field::content_type, r.content_type);
    if (r.status == 405) {
      res.set(http::field::allow, state->handlers.post.count(
                                      std::string(req.target().substr(0, req.target().find('?'))))
                                      ? "POST"
                                      : "GET, HEAD");
    }
    res.body() = std::move(r.body);
    res.prepare_payload();
    if (req.method() == http::verb::head) res.body().clear();
    res.keep_alive(req.keep_alive());
    auto [wec, wn] = co_await http::async_write(stream, res, net::as_tuple(net::use_awaitable));
    if (wec || !req.keep_alive()) break;
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  state->connections.erase(self);
}

net::awaitable<void> accept_loop(std::shared_ptr<AdminServer::State> state) {
  for (;;) {
    auto [ec, socket] = co_await state->acceptor.async_accept(net::as_tuple(net::use_awaitable));
    if (ec == net::error::operation_aborted || state->stopped) co_return;
    if (ec) {
      // Out of descriptors and similar: health probes must answer again once they are back.
      spdlog::warn("admin listener accept failed: {}", ec.message());
      net::steady_timer pause(state->acceptor.get_executor(), std::chrono::milliseconds(50));
      co_await pause.async_wait(net::as_tuple(net::use_awaitable));
      continue;
    }
    net::co_spawn(state->acceptor.get_executor(), serve(state, std::move(socket)), net::detached);
  }
}

}  // namespace

AdminServer::AdminServer(net::any_io_executor executor, const config::HostPort& address,
                         Handlers handlers)
    : state_(std::make_shared<State>(executor, std::move(handlers))) {
  try {
    const tcp::endpoint endpoint(net::ip::make_address(address.host), address.port);
    state_->acceptor.open(endpoint.protocol());
    state_->acceptor.set_option(net::socket_base::reuse_address(true));
    state_->acceptor.bind(endpoint);
    state_->acceptor.listen();
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("admin.address {}: {}", address.to_string(), e.what()));
  }
}

AdminServer::~AdminServer() {
  stop();
}

void AdminServer::start() {
  net::co_spawn(state_->acceptor.get_executor(), accept_loop(state_), net::detached);
}

void AdminServer::stop() {
  if (state_->stopped) return;
  state_->stopped = true;
  boost::system::error_code ignored;
  state_->acceptor.close(ignored);
  for (auto* stream : state_->connections) stream->socket().close(ignored);
}

std::uint16_t AdminServer::port() const noexcept {
  boost::system::error_code ec;
  const auto endpoint = state_->acceptor.local_endpoint(ec);
  return ec ? 0 : endpoint.port();
}

}  // namespace portcullis::admin
