#pragma once
// Passive health and load of upstream endpoints, shared by every io thread: consecutive connect
// failures, the time an ejected endpoint may be tried again, and requests in flight.
// Thread-safety: state() takes a mutex (callers cache the reference, which stays valid for the
// table's life); every EndpointHealth member is a relaxed atomic.

#include "portcullis/admin/metrics.hpp"
#include "portcullis/config/config.hpp"

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace portcullis::upstream {

struct EndpointHealth {
  std::atomic<int> consecutive_failures{0};
  std::atomic<std::int64_t> ejected_until{0};  // steady_clock ticks; 0 = not ejected
  std::atomic<int> outstanding{0};             // requests holding a connection to it

  bool ejected(std::chrono::steady_clock::time_point now) const noexcept {
    return ejected_until.load(std::memory_order_relaxed) > now.time_since_epoch().count();
  }
};

class HealthTable {
 public:
  explicit HealthTable(admin::Metrics& metrics) : metrics_(metrics) {}

  // The state of one endpoint, keyed "upstream/host:port"; created on first use.
  EndpointHealth& state(const std::string& key);

  // A connect succeeded: the failure streak ends.
  void connected(EndpointHealth& h) noexcept;
  // A connect failed; after `upstream.max_failures` in a row the endpoint is ejected for
  // `upstream.ejection_time`, counted and logged.
  void connect_failed(EndpointHealth& h, const config::Upstream& upstream,
                      const std::string& endpoint);

  admin::Metrics& metrics() noexcept { return metrics_; }

 private:
  admin::Metrics& metrics_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<EndpointHealth>> states_;
};

// Counts one request in flight on an endpoint for as long as it lives (moves transfer it).
class Outstanding {
 public:
  Outstanding() = default;
  explicit Outstanding(EndpointHealth* h) noexcept : h_(h) {
    if (h_) h_->outstanding.fetch_add(1, std::memory_order_relaxed);
  }
  Outstanding(Outstanding&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
  Outstanding& operator=(Outstanding&& other) noexcept {
    if (this != &other) {
      release();
      h_ = std::exchange(other.h_, nullptr);
    }
    return *this;
  }
  ~Outstanding() { release(); }

 private:
  void release() noexcept {
    if (h_) h_->outstanding.fetch_sub(1, std::memory_order_relaxed);
    h_ = nullptr;
  }
  EndpointHealth* h_ = nullptr;
};

}  // namespace portcullis::upstream
