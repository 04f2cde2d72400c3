#pragma once
// A bound TLS listener: accepts connections and hands each to the next worker, round-robin.
// With a single worker, the listening socket moves to that worker, which accepts for itself.
// Thread-safety: start() and stop() are called from the thread of the io_context the listener
// was made with; the accept loop runs there, or on the single worker's thread.

#include "portcullis/config/config.hpp"
#include "portcullis/proxy/services.hpp"
#include "portcullis/proxy/snapshot.hpp"
#include "portcullis/proxy/worker.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

namespace portcullis::proxy {

class Listener {
 public:
  using SnapshotSource = std::function<std::shared_ptr<const Snapshot>()>;

  // Binds at once; throws std::runtime_error naming the listener and address on failure.
  Listener(boost::asio::io_context& io, const config::Listener& config, std::size_t index);

  void start(SnapshotSource current, std::vector<Worker*> workers, Services& services);
  void stop();

  std::uint16_t port() const noexcept { return port_; }
  const std::string& name() const noexcept { return name_; }
  std::string address() const;
  int connections() const noexcept { return connections_->load(std::memory_order_relaxed); }

 private:
  boost::asio::io_context& io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  // With a single worker: the listening socket, moved from acceptor_ to its io_context.
  std::shared_ptr<boost::asio::ip::tcp::acceptor> worker_acceptor_;
  std::string name_;
  std::string host_;
  std::uint16_t port_ = 0;
  std::size_t index_;  // position in Config::listeners and Snapshot::listeners
  std::shared_ptr<std::atomic<int>> connections_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace portcullis::proxy
