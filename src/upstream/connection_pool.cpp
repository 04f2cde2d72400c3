#include "portcullis/upstream/connection_pool.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/container/small_vector.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include <sys/socket.h>

namespace portcullis::upstream {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

// A pooled connection the upstream has closed (or sent stray bytes on) must not be reused:
// peek without blocking; "would block" is the only healthy answer.
bool still_open(tcp::socket& socket) {
  char byte;
  const auto n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

bool is_ip_literal(const std::string& host) {
  boost::system::error_code ec;
  net::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

ConnectionPool::ConnectionPool(net::any_io_executor executor) : executor_(std::move(executor)) {}

std::pair<std::shared_ptr<const ConnectionPool::Group>, std::size_t> ConnectionPool::group(
    const config::Upstream& upstream, HealthTable& health, const TlsClientContext* tls) {
  auto found = groups_.find(upstream.name);
  if (found == groups_.end()) found = groups_.emplace(upstream.name, Slot{}).first;
  auto& slot = found->second;
  const auto same = [](const config::HostPort& a, const config::HostPort& b) {
    return a.port == b.port && a.host == b.host;
  };
  if (!slot.group || slot.group->tls != tls ||
      !std::equal(slot.group->endpoints.begin(), slot.group->endpoints.end(),
                  upstream.endpoints.begin(), upstream.endpoints.end(), same)) {
    auto g = std::make_shared<Group>();
    g->endpoints = upstream.endpoints;
    g->tls = tls;
    for (const auto& address : upstream.endpoints) {
      auto name = address.to_string();
      const auto health_key = upstream.name + "/" + name;
      const auto pool_key =
          tls ? fmt::format("{}/tls@{}", health_key, static_cast<const void*>(tls)) : health_key;
      auto& e = endpoints_[pool_key];
      if (!e.health) e.health = &health.state(health_key);
      g->entries.push_back(&e);
      g->names.push_back(std::move(name));
    }
    slot.group = std::move(g);
  }
  return {slot.group, slot.next++};
}

// DNS answers are reused for the upstream's resolve_interval, so a name that moves is followed
// without a resolver round trip per connection; a failed refresh keeps the last good answer.
net::awaitable<boost::system::error_code> ConnectionPool::resolve(const config::Upstream& upstream,
                                                                  const config::HostPort& address,
                                                                  Endpoint& e) {
  const auto now = Clock::now();
  const bool fresh = !e.addresses.empty() && (is_ip_literal(address.host) ||
                                              now - e.resolved_at < upstream.resolve_interval);
  if (fresh) co_return boost::system::error_code{};
  tcp::resolver resolver(executor_);
  auto [ec, results] = co_await resolver.async_resolve(address.host, std::to_string(address.port),
                                                       net::as_tuple(net::use_awaitable));
  if (ec) {
    if (!e.addresses.empty()) {
      spdlog::warn("upstream resolve failed upstream={} host={} error=\"{}\"; keeping last answer",
                   upstream.name, address.host, ec.message());
      co_return boost::system::error_code{};
    }
    co_return ec;
  }
  e.addresses = std::move(results);
  e.resolved_at = now;
  co_return boost::system::error_code{};
}

net::awaitable<Lease> ConnectionPool::acquire(const config::Upstream& upstream, HealthTable& health,
                                              const TlsClientContext* tls, std::string_view avoid,
                                              bool retries_if_closed) {
  const auto count = upstream.endpoints.size();
  const auto now = Clock::now();
  boost::system::error_code last_error = net::error::host_not_found;
  const auto [held, start] = group(upstream, health, tls);
  const auto& g = *held;
  const auto& state = g.entries;

  // Balancing order: a rotating start (round-robin, and the tie-break among equally loaded
  // endpoints), then fewest requests in flight first when so configured; ejected endpoints and
  // the one a retry must avoid go last, still tried when nothing else answers.
  // (Small vectors, and a stable sort and partition by hand: the standard ones take a heap
  // buffer, for a handful of endpoints.)
  boost::container::small_vector<std::size_t, 8> rotated(count);
  for (std::size_t i = 0; i < count; ++i) rotated[i] = (start + i) % count;
  if (upstream.balance == config::Balance::least_outstanding) {
    const auto load = [&](std::size_t i) {
      return state[i]->health->outstanding.load(std::memory_order_relaxed);
    };
    for (std::size_t k = 1; k < count; ++k) {  // insertion sort: stable
      const auto i = rotated[k];
      const auto l = load(i);
      auto j = k;
      for (; j > 0 && load(rotated[j - 1]) > l; --j) rotated[j] = rotated[j - 1];
      rotated[j] = i;
    }
  }
  boost::container::small_vector<std::size_t, 8> order;
  boost::container::small_vector<std::size_t, 8> last;
  for (const auto i : rotated) {
    const bool preferred = !state[i]->health->ejected(now) && g.names[i] != avoid;
    (preferred ? order : last).push_back(i);
  }
  order.insert(order.end(), last.begin(), last.end());

  for (const auto i : order) {
    const auto& address = upstream.endpoints[i];
    auto& e = *state[i];

    while (!e.idle.empty()) {
      Idle candidate = std::move(e.idle.back());
      e.idle.pop_back();
      const auto idle_for = now - candidate.since;
      if (idle_for < upstream.idle_timeout &&
          ((retries_if_closed && idle_for < std::chrono::seconds(1)) ||
           still_open(candidate.connection->next_layer().socket()))) {
        co_return Lease{std::move(candidate.connection), g.names[i], true, Outstanding(e.health),
                        &e};
      }
    }

    if (const auto ec = co_await resolve(upstream, address, e)) {
      last_error = ec;
      health.connect_failed(*e.health, upstream, g.names[i]);
      continue;
    }
    beast::tcp_stream stream(executor_);
    stream.expires_after(upstream.connect_timeout);
    auto [cec, connected] =
        co_await stream.async_connect(e.addresses, net::as_tuple(net::use_awaitable));
    if (cec) {
      last_error = cec;
      health.connect_failed(*e.health, upstream, g.names[i]);
      continue;
    }
    stream.socket().set_option(tcp::no_delay(true));
    if (!tls) {
      health.connected(*e.health);
      co_return Lease{std::make_unique<UpstreamStream>(std::move(stream)), g.names[i], false,
                      Outstanding(e.health), &e};
    }

    // The certificate must chain to the upstream's CAs and carry the expected name; a host
    // given as an IP address is checked against IP SANs and never sent as SNI.
    UpstreamStream::TlsStream secure(std::move(stream), tls->ssl);
    const auto& name = tls->server_name.empty() ? address.host : tls->server_name;
    if (!is_ip_literal(name)) SSL_set_tlsext_host_name(secure.native_handle(), name.c_str());
    secure.set_verify_mode(net::ssl::verify_peer);
    secure.set_verify_callback(net::ssl::host_name_verification(name));
    auto [hec] = co_await secure.async_handshake(net::ssl::stream_base::client,
                                                 net::as_tuple(net::use_awaitable));
    if (hec) {
      last_error = hec;
      spdlog::warn(
          "upstream TLS handshake failed upstream={} endpoint={} server_name={} error=\"{}\"",
          upstream.name, g.names[i], name, hec.message());
      health.connect_failed(*e.health, upstream, g.names[i]);
      continue;
    }
    health.connected(*e.health);
    co_return Lease{std::make_unique<UpstreamStream>(std::move(secure)), g.names[i], false,
                    Outstanding(e.health), &e};
  }
  throw boost::system::system_error(last_error);
}

void ConnectionPool::release(const config::Upstream& upstream, Lease lease) {
  if (!lease.entry) return;
  auto& idle = lease.entry->idle;
  if (static_cast<int>(idle.size()) >= upstream.max_idle_connections) return;
  lease.stream().next_layer().expires_never();
  idle.push_back(Idle{std::move(lease.connection), Clock::now()});
}

std::size_t ConnectionPool::idle_connections() const noexcept {
  std::size_t n = 0;
  for (const auto& [key, e] : endpoints_) n += e.idle.size();
  return n;
}

}  // namespace portcullis::upstream
