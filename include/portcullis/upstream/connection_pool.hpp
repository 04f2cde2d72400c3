#pragma once
// Keep-alive connections to upstream endpoints, one pool per io thread: endpoint choice
// (round-robin or least outstanding requests, ejected endpoints last), cached DNS answers,
// connect, and reuse.
// Thread-safety: none; a pool belongs to one io thread and is only touched from it, which is
// what lets it go without locks. The shared HealthTable is atomics only.

#include "portcullis/config/config.hpp"
#include "portcullis/upstream/endpoint_health.hpp"
#include "portcullis/upstream/tls_client_context.hpp"
#include "portcullis/upstream/upstream_stream.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portcullis::upstream {

// One endpoint's idle connections in one io thread's pool (under one TLS context).
struct PoolEntry {
  struct Idle {
    std::unique_ptr<UpstreamStream> connection;
    std::chrono::steady_clock::time_point since;
  };
  EndpointHealth* health = nullptr;
  std::deque<Idle> idle;
  boost::asio::ip::tcp::resolver::results_type addresses;
  std::chrono::steady_clock::time_point resolved_at;
};

// A connection taken from the pool, either reused or fresh. While it lives it counts as one
// request outstanding on its endpoint.
struct Lease {
  // Held by pointer: moving a Beast tcp_stream builds a new one (its state and three timers),
  // and a lease moves several times between the pool and a session.
  std::unique_ptr<UpstreamStream> connection;
  UpstreamStream& stream() noexcept { return *connection; }
  std::string endpoint;  // "host:port", for logs
  bool reused = false;
  Outstanding outstanding;
  PoolEntry* entry = nullptr;  // where release() puts it back (entries are never removed)
};

class ConnectionPool {
 public:
  explicit ConnectionPool(boost::asio::any_io_executor executor);

  // An idle keep-alive connection to one of the upstream's endpoints, or a new one. Endpoints
  // are tried in balancing order, each once, ejected ones and `avoid` ("host:port") last, each
  // within the upstream's connect timeout. Throws boost::system::system_error (the last
  // failure) when none can be reached; the error is beast::error::timeout when the last
  // attempt timed out. `health` is the process-wide table (always the same one). With `tls`
  // (the upstream's context in the current snapshot), connections are TLS: the handshake is
  // part of connecting, within the same timeout, and its failure counts as a connect failure;
  // connections are pooled per context, so a reload never reuses one made under old settings.
  // An idle connection is checked before reuse (a non-blocking peek: the upstream may have
  // closed it), except with `retries_if_closed`, when the caller sends the request again on a
  // new connection should a reused one turn out closed: then one pooled less than a second ago
  // is taken as it is, which spares a system call per request under steady load.
  boost::asio::awaitable<Lease> acquire(const config::Upstream& upstream, HealthTable& health,
                                        const TlsClientContext* tls = nullptr,
                                        std::string_view avoid = {},
                                        bool retries_if_closed = false);

  // Gives a connection whose last response was read completely back for reuse.
  void release(const config::Upstream& upstream, Lease lease);

  std::size_t idle_connections() const noexcept;

 private:
  using Endpoint = PoolEntry;
  using Idle = PoolEntry::Idle;
  // An upstream's entries and endpoint names as last worked out, so that a request finds them
  // without building a string. Replaced (never changed: an acquire waiting to connect holds
  // the one it started with) when the upstream's endpoints or TLS context change.
  struct Group {
    std::vector<config::HostPort> endpoints;
    const TlsClientContext* tls = nullptr;
    std::vector<Endpoint*> entries;
    std::vector<std::string> names;  // "host:port"
  };
  struct Slot {
    std::shared_ptr<const Group> group;
    std::size_t next = 0;  // round-robin position
  };
  // The upstream's group, and where its round-robin starts this time.
  std::pair<std::shared_ptr<const Group>, std::size_t> group(const config::Upstream& upstream,
                                                             HealthTable& health,
                                                             const TlsClientContext* tls);
  boost::asio::awaitable<boost::system::error_code> resolve(const config::Upstream& upstream,
                                                            const config::HostPort& address,
                                                            Endpoint& e);

  boost::asio::any_io_executor executor_;
  std::map<std::string, Endpoint> endpoints_;        // by "upstream/host:port[/tls context]"
  std::map<std::string, Slot, std::less<>> groups_;  // by upstream name
};

}  // namespace portcullis::upstream
