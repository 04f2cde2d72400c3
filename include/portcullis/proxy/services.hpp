#pragma once
// Process-wide services that outlive every configuration generation: metrics, upstream endpoint
// health, the access log, and the drain flag set on shutdown.
// Thread-safety: all members are safe to use from every io thread.

#include "portcullis/admin/metrics.hpp"
#include "portcullis/upstream/endpoint_health.hpp"

#include <atomic>
#include <cstdint>
#include <memory>

namespace spdlog {
class logger;
}

namespace portcullis::proxy {

struct Services {
  admin::Metrics metrics;
  upstream::HealthTable upstream_health{metrics};  // passive health, shared by every io thread
  std::shared_ptr<spdlog::logger> access_log;
  std::atomic<bool> draining{false};
  std::atomic<std::uint64_t> next_connection_id{1};
};

}  // namespace portcullis::proxy
