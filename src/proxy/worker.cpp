#include "portcullis/proxy/worker.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

namespace portcullis::proxy {

Worker::Worker() : pool_(io_.get_executor()) {}

Worker::~Worker() {
  stop();
}

void Worker::start() {
  guard_.emplace(io_.get_executor());
  thread_ = std::thread([this] {
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        // A bug in one connection must not take the whole worker down.
        spdlog::error("io thread: unhandled exception: {}", e.what());
      }
    }
  });
}

void Worker::stop() {
  guard_.reset();
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

Worker::Handle Worker::track(tls::TimedSocket& socket) {
  sessions_.push_front(Tracked{&socket, true});
  return sessions_.begin();
}

void Worker::untrack(Handle handle) {
  sessions_.erase(handle);
}

void Worker::drain_idle() {
  boost::asio::post(io_, [this] {
    for (auto& session : sessions_) {
      if (session.idle) session.socket->expires_after(std::chrono::seconds(0));
    }
  });
}

}  // namespace portcullis::proxy
