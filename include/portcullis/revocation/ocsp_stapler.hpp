#pragma once
// Keeps an OCSP response for a listener's own certificate ready to staple: fetched from the
// configured responder or the certificate's AIA OCSP URI (or read from a file), verified,
// refreshed half-way to its nextUpdate (at most every `refresh`), retried with backoff on
// failure. A response that fails verification or says anything but good is never published;
// the last good one stays until its nextUpdate.
// Thread-safety: all methods may be called from any thread; the fetching runs on its own thread.
// response() is lock-free and does no I/O (it is called during handshakes).

#include "portcullis/config/config.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace portcullis::revocation {

struct StaplingStatus {
  std::string listener;
  std::string responder;  // URL, or the file a response is read from
  std::optional<std::chrono::system_clock::time_point> this_update, next_update, last_fetch,
      last_success;
  std::string last_error;
  std::uint64_t fetched = 0, failed = 0, rejected = 0;
  bool valid = false;  // a good, current response is being stapled
};

class OcspStapler {
 public:
  // Reads the certificate chain (leaf first) and finds the leaf's issuer in it. Throws
  // std::runtime_error naming the file when the chain cannot be used for stapling.
  OcspStapler(std::string listener, config::OcspStapling settings,
              const std::filesystem::path& certificate_chain);
  ~OcspStapler();
  OcspStapler(const OcspStapler&) = delete;
  OcspStapler& operator=(const OcspStapler&) = delete;

  void start();
  void stop();

  // The DER response to staple now, or null when there is no good, current one.
  std::shared_ptr<const std::string> response() const;
  StaplingStatus status() const;
  // portcullis_ocsp_staple_* lines for this listener (no HELP/TYPE headers).
  std::string render_metrics() const;
  // What identifies the stapled certificate and the settings (a reload keeps a stapler whose
  // identity is unchanged).
  const std::string& identity() const;

  static std::string metric_headers();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace portcullis::revocation
