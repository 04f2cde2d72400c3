#pragma once
// The load generator proper: connection slots as coroutines on a few io threads, one shared
// client SSL_CTX (certificate and key loaded once), one prepared request.
// Thread-safety: run() once, from one thread.

#include "options.hpp"
#include "report.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

#include <atomic>
#include <chrono>

namespace portcullis::bench {

class LoadClient {
 public:
  // Builds the TLS context and the request. Throws std::runtime_error / tls::TlsError naming
  // the file or setting at fault.
  explicit LoadClient(Options options);

  // Runs until the duration has passed or the count is reached; in-flight requests complete.
  Recorder run(RunInfo& info);

 private:
  struct Slot;
  boost::asio::awaitable<void> run_slot(int slot, Recorder& rec);
  boost::asio::awaitable<void> one_request(Slot& slot, Recorder& rec,
                                           std::chrono::steady_clock::time_point scheduled);

  Options o_;
  boost::asio::ssl::context ctx_;
  boost::asio::ip::tcp::endpoint endpoint_;
  std::string request_;
  std::chrono::steady_clock::time_point start_, deadline_;
  std::atomic<std::uint64_t> issued_{0};
};

}  // namespace portcullis::bench
