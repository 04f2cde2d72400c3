#pragma once
// One io thread: its io_context, its upstream connection pool, and the sessions it runs.
// Every connection lives on one worker from accept to close, so nothing a session touches
// (its streams, the pool) needs a lock or a strand.
// Thread-safety: start/stop/drain_idle may be called from any thread; track/untrack and pool()
// only from this worker's own thread.

#include "portcullis/tls/socket_stream.hpp"
#include "portcullis/upstream/connection_pool.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <list>
#include <optional>
#include <thread>

namespace portcullis::proxy {

class Worker {
 public:
  struct Tracked {
    tls::TimedSocket* socket = nullptr;
    bool idle = true;  // waiting for the next request on a keep-alive connection
  };
  using Handle = std::list<Tracked>::iterator;

  Worker();
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  boost::asio::io_context& io() noexcept { return io_; }
  upstream::ConnectionPool& pool() noexcept { return pool_; }

  void start();
  // Ends the run loop (remaining coroutines are destroyed) and joins the thread.
  void stop();

  Handle track(tls::TimedSocket& socket);
  void untrack(Handle handle);
  // Ends every connection that is idle between requests; busy ones finish their request first.
  void drain_idle();

 private:
  // Declared first, so destroyed last: connections still parked in io_ untrack themselves when
  // io_ destroys them.
  std::list<Tracked> sessions_;
  boost::asio::io_context io_{1};
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_;
  std::thread thread_;
  upstream::ConnectionPool pool_;
};

}  // namespace portcullis::proxy
