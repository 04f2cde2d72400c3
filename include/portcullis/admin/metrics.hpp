#pragma once
// Process-wide counters and histograms, rendered in the Prometheus text format.
// Thread-safety: every update is a relaxed atomic operation; render() may run concurrently
// with updates and sees each value at some recent point.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::admin {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds_seconds);
  void observe(double seconds) noexcept;
  void render(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<std::atomic<std::uint64_t>> buckets_;  // one per bound, plus +Inf
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_nanos_{0};
};

// Why a handshake ended. Stable names: they are label values on dashboards.
enum class HandshakeResult : int {
  ok,
  no_certificate,
  unknown_ca,
  expired,
  not_yet_valid,
  bad_purpose,  // leaf without clientAuth EKU, wrong key usage
  chain_too_long,
  revoked,
  revocation_unknown,
  bad_certificate,  // other verification failures
  timeout,
  protocol_error,  // version/cipher/group mismatch, garbage, client went away
  count_
};
std::string_view to_string(HandshakeResult result);

enum class UpstreamError : int { connect_failed, timeout, reset, bad_response, tls, count_ };
std::string_view to_string(UpstreamError error);

class Metrics {
 public:
  Metrics();

  void connection_accepted() noexcept;
  void connection_closed() noexcept;
  void connection_rejected() noexcept;  // over the listener's connection limit
  void handshake(HandshakeResult result, double seconds) noexcept;
  // A resumed session admitted: its revocation stamp held (`by_stamp`), or its chain was checked
  // against the current revocation data.
  void resumed_handshake(bool by_stamp) noexcept;
  void request(int status, double seconds) noexcept;
  void bad_request() noexcept;  // malformed request refused before any forwarding
  void upstream_error(UpstreamError error) noexcept;
  // A request refused by a route's allow rules. Label values are bounded by the configuration
  // (listener names, route matches, reason codes), so the series count stays small.
  void authz_denied(std::string_view listener, std::string_view route, std::string_view reason);
  // Upstream endpoint events: "ejected" after repeated connect failures, "retried" when a safe
  // request was sent again on another endpoint.
  void upstream_event(std::string_view upstream, std::string_view endpoint, std::string_view event);
  void config_reload(bool ok) noexcept;
  // WebSocket tunnels: opened after the upstream's 101, closed by either side or, when
  // `idle_timeout` is set, after no byte moved either way for the listener's idle timeout.
  void tunnel_opened() noexcept;
  void tunnel_closed(bool idle_timeout) noexcept;

  std::uint64_t active_connections() const noexcept;
  std::string render() const;

 private:
  std::atomic<std::uint64_t> accepted_{0};
  std::atomic<std::int64_t> active_{0};
  std::atomic<std::uint64_t> rejected_{0};
  std::array<std::atomic<std::uint64_t>, static_cast<int>(HandshakeResult::count_)> handshakes_{};
  Histogram handshake_seconds_;
  std::atomic<std::uint64_t> resumed_by_stamp_{0};
  std::atomic<std::uint64_t> resumed_checked_{0};
  std::array<std::atomic<std::uint64_t>, 6> requests_by_class_{};  // index 1..5 = 1xx..5xx
  Histogram request_seconds_;
  std::atomic<std::uint64_t> bad_requests_{0};
  std::array<std::atomic<std::uint64_t>, static_cast<int>(UpstreamError::count_)>
      upstream_errors_{};
  // Labelled series created on first use; a mutex is fine for these rare events.
  mutable std::mutex labelled_mutex_;
  std::map<std::string, std::uint64_t> authz_denied_;     // rendered label set → count
  std::map<std::string, std::uint64_t> upstream_events_;  // rendered label set → count
  std::atomic<std::uint64_t> reloads_ok_{0};
  std::atomic<std::uint64_t> reloads_failed_{0};
  std::atomic<std::uint64_t> tunnels_opened_{0};
  std::atomic<std::int64_t> tunnels_active_{0};
  std::atomic<std::uint64_t> tunnels_idle_closed_{0};
};

}  // namespace portcullis::admin
