#pragma once
// The built-in echo upstream used by `portcullis demo` and the integration tests: it answers
// every request with what it received (request line, headers, body length and SHA-256) as JSON.
//   GET /bytes/N           N bytes, byte i = i % 251 (Content-Length)
//   GET /chunked-bytes/N   the same bytes, chunked
//   ANY /delay/MS          the echo JSON after MS milliseconds
//   ANY /status/CODE       the echo JSON with that status
//   GET /__stats           {"requests":N,"connections":C,"bytes_received":B}: requests seen so
//                          far, connections that carried request bytes, request bytes
//                          received (header and body bytes parsed, plus bytes left unparsed
//                          when a connection ended); /__stats requests are not counted
// Thread-safety: construct, start and stop from the executor's thread; requests() from any.

#include "portcullis/config/config.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace portcullis::echo {

class EchoServer {
 public:
  EchoServer(boost::asio::any_io_executor executor, const config::HostPort& address);
  ~EchoServer();
  void start();
  void stop();
  std::uint16_t port() const noexcept;
  std::uint64_t requests() const noexcept;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// `portcullis echo-upstream --listen ADDR`: serves until SIGINT/SIGTERM.
int run_echo_upstream(const std::string& listen_address, int threads = 1);

}  // namespace portcullis::echo
