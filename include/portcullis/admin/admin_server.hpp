#pragma once
// The plain-HTTP admin listener: /healthz, /readyz, /metrics, /status and POST actions.
// Thread-safety: construct, start and stop from the executor's thread (or before it runs);
// handlers are called on that executor.

#include "portcullis/config/config.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace portcullis::admin {

struct Response {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

struct Handlers {
  std::function<bool()> ready;
  std::function<std::string()> metrics;
  std::function<std::string()> status_json;
  std::map<std::string, std::function<Response()>> post;  // path → action, POST only
};

class AdminServer {
 public:
  // Binds and listens at once; throws std::runtime_error naming the address on failure.
  AdminServer(boost::asio::any_io_executor executor, const config::HostPort& address,
              Handlers handlers);
  ~AdminServer();

  void start();
  void stop();
  std::uint16_t port() const noexcept;

  struct State;  // shared with the connection coroutines, which may outlive a stop()

 private:
  std::shared_ptr<State> state_;
};

// The response for one admin request (exposed for tests).
Response handle_admin_request(const Handlers& handlers, std::string_view method,
                              std::string_view target);

}  // namespace portcullis::admin
