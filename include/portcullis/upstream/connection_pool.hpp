#pragma once
// Keep-alive connections to upstream endpoints, one pool per io thread.
// Thread-safety: none; a pool belongs to one io thread and is only touched from it, which is
// what lets it go without locks.

#include "portcullis/config/config.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <chrono>
#include <deque>
#include <map>
#include <string>

namespace portcullis::upstream {

// A connection taken from the pool, either reused or fresh.
struct Lease {
  boost::beast::tcp_stream stream;
  std::string endpoint;  // "host:port", for logs
  bool reused = false;
};

class ConnectionPool {
 public:
  explicit ConnectionPool(boost::asio::any_io_executor executor);

  // An idle keep-alive connection to one of the upstream's endpoints, or a new one. Endpoints
  // are tried round-robin, each once, within the upstream's connect timeout. Throws
  // boost::system::system_error (the last failure) when none can be reached; the error is
  // beast::error::timeout when the last attempt timed out.
  boost::asio::awaitable<Lease> acquire(const config::Upstream& upstream);

  // Gives a connection whose last response was read completely back for reuse.
  void release(const config::Upstream& upstream, Lease lease);

  std::size_t idle_connections() const noexcept;

 private:
  struct Idle {
    boost::beast::tcp_stream stream;
    std::chrono::steady_clock::time_point since;
  };
  boost::asio::any_io_executor executor_;
  std::map<std::string, std::deque<Idle>> idle_;  // by "upstream/endpoint"
  std::map<std::string, std::size_t> next_;       // round-robin position by upstream
};

}  // namespace portcullis::upstream
