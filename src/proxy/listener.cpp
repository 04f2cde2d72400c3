#include "portcullis/proxy/listener.hpp"

#include "portcullis/proxy/client_session.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <unistd.h>

namespace portcullis::proxy {

namespace net = boost::asio;
using tcp = net::ip::tcp;

Listener::Listener(net::io_context& io, const config::Listener& config, std::size_t index)
    : io_(io), acceptor_(io), name_(config.name), host_(config.address.host), index_(index) {
  try {
    const tcp::endpoint endpoint(net::ip::make_address(config.address.host), config.address.port);
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(net::socket_base::reuse_address(true));
    // Linux gives accepted sockets the listening socket's TCP_NODELAY: one system call less
    // per connection (tested in listener_test).
    acceptor_.set_option(tcp::no_delay(true));
    acceptor_.bind(endpoint);
    acceptor_.listen(net::socket_base::max_listen_connections);
    port_ = acceptor_.local_endpoint().port();
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("listener '{}' cannot listen on {}: {}", config.name,
                                         config.address.to_string(), e.what()));
  }
}

std::string Listener::address() const {
  return config::HostPort{host_, port_}.to_string();
}

void Listener::start(SnapshotSource current, std::vector<Worker*> workers, Services& services) {
  // With one worker, the listening socket moves to it and it accepts for itself: every
  // connection goes to it anyway, and handing each from this thread to it cost a wake-up of
  // both threads. With more, this thread deals connections out round-robin.
  tcp::acceptor* acceptor = &acceptor_;
  if (workers.size() == 1) {
    const auto protocol = acceptor_.local_endpoint().protocol();
    worker_acceptor_ = std::make_shared<tcp::acceptor>(workers.front()->io());
    const auto fd = acceptor_.release();
    boost::system::error_code ec;
    worker_acceptor_->assign(protocol, fd, ec);
    if (ec) {
      ::close(fd);
      throw std::runtime_error(
          fmt::format("listener '{}': cannot hand the listening socket to the io thread: {}", name_,
                      ec.message()));
    }
    acceptor = worker_acceptor_.get();
  }
  auto loop = [this, acceptor, keep = worker_acceptor_, current = std::move(current),
               workers = std::move(workers), &services]() -> net::awaitable<void> {
    std::size_t next = 0;
    for (;;) {
      Worker& worker = *workers[next++ % workers.size()];
      // The accepted socket belongs to the worker's io_context from the start; accept() gives
      // the peer's address, so no getpeername() follows.
      tcp::endpoint peer;
      auto [ec, socket] =
          co_await acceptor->async_accept(worker.io(), peer, net::as_tuple(net::use_awaitable));
      if (ec == net::error::operation_aborted || !acceptor->is_open()) co_return;
      if (ec) {
        // Out of descriptors and similar: log, back off briefly, keep serving.
        spdlog::warn("listener '{}' accept failed: {}", name_, ec.message());
        net::steady_timer pause(acceptor->get_executor(), std::chrono::milliseconds(50));
        co_await pause.async_wait(net::as_tuple(net::use_awaitable));
        continue;
      }
      auto snapshot = current();
      const auto& context = *snapshot->listeners.at(index_);
      services.metrics.connection_accepted();
      if (connections_->fetch_add(1, std::memory_order_relaxed) >=
          context.config->max_connections) {
        connections_->fetch_sub(1, std::memory_order_relaxed);
        services.metrics.connection_rejected();
        services.metrics.connection_closed();
        boost::system::error_code ignored;
        socket.close(ignored);
        continue;
      }
      SessionParams params{snapshot, &context, &worker, &services, connections_};
      net::co_spawn(worker.io(), run_client_session(std::move(socket), peer, std::move(params)),
                    net::detached);
    }
  };
  net::co_spawn(acceptor->get_executor(), std::move(loop), net::detached);
}

void Listener::stop() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  // The worker's acceptor is closed on its thread, ahead of anything posted there after this.
  if (worker_acceptor_) {
    net::post(worker_acceptor_->get_executor(), [acceptor = worker_acceptor_] {
      boost::system::error_code ignored;
      acceptor->close(ignored);
    });
  }
}

}  // namespace portcullis::proxy
