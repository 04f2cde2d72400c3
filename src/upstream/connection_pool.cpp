#include "portcullis/upstream/connection_pool.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>

#include <sys/socket.h>

namespace portcullis::upstream {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;

namespace {

std::string pool_key(const config::Upstream& upstream, const config::HostPort& endpoint) {
  return upstream.name + "/" + endpoint.to_string();
}

// A pooled connection the upstream has closed (or sent stray bytes on) must not be reused:
// peek without blocking; "would block" is the only healthy answer.
bool still_open(tcp::socket& socket) {
  char byte;
  const auto n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

ConnectionPool::ConnectionPool(net::any_io_executor executor) : executor_(std::move(executor)) {}

net::awaitable<Lease> ConnectionPool::acquire(const config::Upstream& upstream) {
  const auto count = upstream.endpoints.size();
  auto& position = next_[upstream.name];
  const auto now = std::chrono::steady_clock::now();
  boost::system::error_code last_error = net::error::host_not_found;

  for (std::size_t attempt = 0; attempt < count; ++attempt) {
    const auto& endpoint = upstream.endpoints[position++ % count];
    const auto key = pool_key(upstream, endpoint);

    auto& idle = idle_[key];
    while (!idle.empty()) {
      Idle candidate = std::move(idle.back());
      idle.pop_back();
      if (now - candidate.since < upstream.idle_timeout && still_open(candidate.stream.socket())) {
        co_return Lease{std::move(candidate.stream), endpoint.to_string(), true};
      }
    }

    beast::tcp_stream stream(executor_);
    tcp::resolver resolver(executor_);
    stream.expires_after(upstream.connect_timeout);
    auto [rec, results] = co_await resolver.async_resolve(
        endpoint.host, std::to_string(endpoint.port), net::as_tuple(net::use_awaitable));
    if (rec) {
      last_error = rec;
      continue;
    }
    auto [cec, connected] =
        co_await stream.async_connect(results, net::as_tuple(net::use_awaitable));
    if (cec) {
      last_error = cec;
      continue;
    }
    stream.socket().set_option(tcp::no_delay(true));
    co_return Lease{std::move(stream), endpoint.to_string(), false};
  }
  throw boost::system::system_error(last_error);
}

void ConnectionPool::release(const config::Upstream& upstream, Lease lease) {
  // The endpoint is recovered from the lease's text form; pools are keyed the same way.
  const auto key = upstream.name + "/" + lease.endpoint;
  auto& idle = idle_[key];
  if (static_cast<int>(idle.size()) >= upstream.max_idle_connections) return;
  lease.stream.expires_never();
  idle.push_back(Idle{std::move(lease.stream), std::chrono::steady_clock::now()});
}

std::size_t ConnectionPool::idle_connections() const noexcept {
  std::size_t n = 0;
  for (const auto& [key, list] : idle_) n += list.size();
  return n;
}

}  // namespace portcullis::upstream
