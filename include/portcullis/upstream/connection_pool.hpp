#pragma once
// Keep-alive connections to upstream endpoints, one pool per io thread: endpoint choice
// (round-robin or least outstanding requests, ejected endpoints last), cached DNS answers,
// connect, and reuse.
// Thread-safety: none; a pool belongs to one io thread and is only touched from it, which is
// what lets it go without locks. The shared HealthTable is atomics only.

#include "portcullis/config/config.hpp"
#include "portcullis/upstream/endpoint_health.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <chrono>
#include <deque>
#include <map>
#include <string>
#include <string_view>

namespace portcullis::upstream {

// A connection taken from the pool, either reused or fresh. While it lives it counts as one
// request outstanding on its endpoint.
struct Lease {
  boost::beast::tcp_stream stream;
  std::string endpoint;  // "host:port", for logs
  bool reused = false;
  Outstanding outstanding;
};

class ConnectionPool {
 public:
  explicit ConnectionPool(boost::asio::any_io_executor executor);

  // An idle keep-alive connection to one of the upstream's endpoints, or a new one. Endpoints
  // are tried in balancing order, each once, ejected ones and `avoid` ("host:port") last, each
  // within the upstream's connect timeout. Throws boost::system::system_error (the last
  // failure) when none can be reached; the error is beast::error::timeout when the last
  // attempt timed out. `health` is the process-wide table (always the same one).
  boost::asio::awaitable<Lease> acquire(const config::Upstream& upstream, HealthTable& health,
                                        std::string_view avoid = {});

  // Gives a connection whose last response was read completely back for reuse.
  void release(const config::Upstream& upstream, Lease lease);

  std::size_t idle_connections() const noexcept;

 private:
  struct Idle {
    boost::beast::tcp_stream stream;
    std::chrono::steady_clock::time_point since;
  };
  struct Endpoint {
    EndpointHealth* health = nullptr;
    std::deque<Idle> idle;
    boost::asio::ip::tcp::resolver::results_type addresses;
    std::chrono::steady_clock::time_point resolved_at;
  };
  Endpoint& endpoint(const config::Upstream& upstream, const config::HostPort& address,
                     HealthTable* health);
  boost::asio::awaitable<boost::system::error_code> resolve(const config::Upstream& upstream,
                                                            const config::HostPort& address,
                                                            Endpoint& e);

  boost::asio::any_io_executor executor_;
  std::map<std::string, Endpoint> endpoints_;  // by "upstream/host:port"
  std::map<std::string, std::size_t> next_;    // round-robin position by upstream
};

}  // namespace portcullis::upstream
