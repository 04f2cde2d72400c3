#pragma once
// The built-in echo upstream used by `portcullis demo` and the integration tests: it answers
// every request with what it received (request line, headers, body length and SHA-256) as JSON,
// plus, in TLS mode, the SNI it received and the client certificate's subject.
//   GET /bytes/N           N bytes, byte i = i % 251 (Content-Length)
//   GET /chunked-bytes/N   the same bytes, chunked
//   ANY /delay/MS          the echo JSON after MS milliseconds
//   ANY /status/CODE       the echo JSON with that status
//   GET /ws                a WebSocket handshake is answered 101, then every message is sent
//                          back as it came; without the handshake, the echo JSON
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

// TLS mode: a certificate chain and key (PEM) to serve, and optionally the CAs a client
// certificate must chain to (one is then required). Empty certificate = plain HTTP.
struct EchoTls {
  std::string certificate;
  std::string private_key;
  std::string client_ca;
};

class EchoServer {
 public:
  EchoServer(boost::asio::any_io_executor executor, const config::HostPort& address,
             const EchoTls& tls = {});
  ~EchoServer();
  void start();
  void stop();
  std::uint16_t port() const noexcept;
  std::uint64_t requests() const noexcept;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// `portcullis echo-upstream --listen ADDR [--tls-cert F --tls-key F [--require-client-ca F]]`:
// serves until SIGINT/SIGTERM.
int run_echo_upstream(const std::string& listen_address, int threads = 1, const EchoTls& tls = {});

}  // namespace portcullis::echo
