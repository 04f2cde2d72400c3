#include "portcullis/upstream/endpoint_health.hpp"

#include <spdlog/spdlog.h>

namespace portcullis::upstream {

EndpointHealth& HealthTable::state(const std::string& key) {
  const std::lock_guard lock(mutex_);
  auto& slot = states_[key];
  if (!slot) slot = std::make_unique<EndpointHealth>();
  return *slot;
}

void HealthTable::connected(EndpointHealth& h) noexcept {
  h.consecutive_failures.store(0, std::memory_order_relaxed);
}

void HealthTable::connect_failed(EndpointHealth& h, const config::Upstream& upstream,
                                 const std::string& endpoint) {
  metrics_.upstream_event(upstream.name, endpoint, "connect_failed");
  const int failures = h.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (upstream.max_failures == 0 || failures < upstream.max_failures) return;
  // Several threads may see the threshold at once; the exchange lets one of them report it.
  if (h.consecutive_failures.exchange(0, std::memory_order_relaxed) == 0) return;
  const auto until = std::chrono::steady_clock::now() + upstream.ejection_time;
  h.ejected_until.store(until.time_since_epoch().count(), std::memory_order_relaxed);
  metrics_.upstream_event(upstream.name, endpoint, "ejected");
  spdlog::warn("upstream endpoint ejected upstream={} endpoint={} failures={} for_ms={}",
               upstream.name, endpoint, failures, upstream.ejection_time.count());
}

}  // namespace portcullis::upstream
