#include "portcullis/admin/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace portcullis::admin {

namespace {
constexpr auto relaxed = std::memory_order_relaxed;

void render_counter_header(std::string& out, std::string_view name, std::string_view help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} counter\n", name, help, name);
}
}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds_seconds)
    : bounds_(std::move(upper_bounds_seconds)), buckets_(bounds_.size() + 1) {}

void Histogram::observe(double seconds) noexcept {
  std::size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, relaxed);
  count_.fetch_add(1, relaxed);
  sum_nanos_.fetch_add(static_cast<std::uint64_t>(seconds * 1e9), relaxed);
}

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += buckets_[i].load(relaxed);
    out +=
        fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, bounds_[i], cumulative);
  }
  cumulative += buckets_[bounds_.size()].load(relaxed);
  out += fmt::format("{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, cumulative);
  const std::string braces = labels.empty() ? "" : fmt::format("{{{}}}", labels);
  out += fmt::format("{}_sum{} {:.9f}\n", name, braces, sum_nanos_.load(relaxed) / 1e9);
  out += fmt::format("{}_count{} {}\n", name, braces, count_.load(relaxed));
}

std::string_view to_string(HandshakeResult result) {
  switch (result) {
    case HandshakeResult::ok:
      return "ok";
    case HandshakeResult::no_certificate:
      return "no_certificate";
    case HandshakeResult::unknown_ca:
      return "unknown_ca";
    case HandshakeResult::expired:
      return "expired";
    case HandshakeResult::not_yet_valid:
      return "not_yet_valid";
    case HandshakeResult::bad_purpose:
      return "bad_purpose";
    case HandshakeResult::chain_too_long:
      return "chain_too_long";
    case HandshakeResult::revoked:
      return "revoked";
    case HandshakeResult::revocation_unknown:
      return "revocation_unknown";
    case HandshakeResult::bad_certificate:
      return "bad_certificate";
    case HandshakeResult::timeout:
      return "timeout";
    case HandshakeResult::protocol_error:
      return "protocol_error";
    case HandshakeResult::count_:
      break;
  }
  return "unknown";
}

std::string_view to_string(UpstreamError error) {
  switch (error) {
    case UpstreamError::connect_failed:
      return "connect_failed";
    case UpstreamError::timeout:
      return "timeout";
    case UpstreamError::reset:
      return "reset";
    case UpstreamError::bad_response:
      return "bad_response";
    case UpstreamError::tls:
      return "tls";
    case UpstreamError::count_:
      break;
  }
  return "unknown";
}

Metrics::Metrics()
    : handshake_seconds_({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5}),
      request_seconds_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}) {}

void Metrics::connection_accepted() noexcept {
  accepted_.fetch_add(1, relaxed);
  active_.fetch_add(1, relaxed);
}
void Metrics::connection_closed() noexcept {
  active_.fetch_sub(1, relaxed);
}
void Metrics::connection_rejected() noexcept {
  rejected_.fetch_add(1, relaxed);
}

void Metrics::tunnel_opened() noexcept {
  tunnels_opened_.fetch_add(1, relaxed);
  tunnels_active_.fetch_add(1, relaxed);
}
void Metrics::tunnel_closed(bool idle_timeout) noexcept {
  tunnels_active_.fetch_sub(1, relaxed);
  if (idle_timeout) tunnels_idle_closed_.fetch_add(1, relaxed);
}

void Metrics::handshake(HandshakeResult result, double seconds) noexcept {
  handshakes_[static_cast<int>(result)].fetch_add(1, relaxed);
  if (result == HandshakeResult::ok) handshake_seconds_.observe(seconds);
}

void Metrics::resumed_handshake(bool by_stamp) noexcept {
  (by_stamp ? resumed_by_stamp_ : resumed_checked_).fetch_add(1, relaxed);
}

void Metrics::request(int status, double seconds) noexcept {
  const int cls = status / 100;
  if (cls >= 1 && cls <= 5) requests_by_class_[cls].fetch_add(1, relaxed);
  request_seconds_.observe(seconds);
}

void Metrics::bad_request() noexcept {
  bad_requests_.fetch_add(1, relaxed);
}
void Metrics::upstream_error(UpstreamError error) noexcept {
  upstream_errors_[static_cast<int>(error)].fetch_add(1, relaxed);
}
namespace {

// Prometheus label values escape backslash, double quote and newline.
std::string label_value(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

void Metrics::authz_denied(std::string_view listener, std::string_view route,
                           std::string_view reason) {
  auto labels = fmt::format("listener=\"{}\",route=\"{}\",reason=\"{}\"", label_value(listener),
                            label_value(route), label_value(reason));
  const std::lock_guard lock(labelled_mutex_);
  ++authz_denied_[labels];
}

void Metrics::upstream_event(std::string_view upstream, std::string_view endpoint,
                             std::string_view event) {
  auto labels = fmt::format("upstream=\"{}\",endpoint=\"{}\",event=\"{}\"", label_value(upstream),
                            label_value(endpoint), label_value(event));
  const std::lock_guard lock(labelled_mutex_);
  ++upstream_events_[labels];
}

void Metrics::config_reload(bool ok) noexcept {
  (ok ? reloads_ok_ : reloads_failed_).fetch_add(1, relaxed);
}

std::uint64_t Metrics::active_connections() const noexcept {
  const auto n = active_.load(relaxed);
  return n < 0 ? 0 : static_cast<std::uint64_t>(n);
}

std::string Metrics::render() const {
  std::string out;
  out.reserve(8192);
  render_counter_header(out, "portcullis_connections_accepted_total", "TCP connections accepted.");
  out += fmt::format("portcullis_connections_accepted_total {}\n", accepted_.load(relaxed));
  out +=
      "# HELP portcullis_connections_active Connections currently open.\n"
      "# TYPE portcullis_connections_active gauge\n";
  out += fmt::format("portcullis_connections_active {}\n", active_connections());
  render_counter_header(out, "portcullis_connections_rejected_total",
                        "Connections closed at once because the listener was at its limit.");
  out += fmt::format("portcullis_connections_rejected_total {}\n", rejected_.load(relaxed));

  render_counter_header(out, "portcullis_handshakes_total", "TLS handshakes by result.");
  for (int i = 0; i < static_cast<int>(HandshakeResult::count_); ++i) {
    out += fmt::format("portcullis_handshakes_total{{result=\"{}\"}} {}\n",
                       to_string(static_cast<HandshakeResult>(i)), handshakes_[i].load(relaxed));
  }
  render_counter_header(out, "portcullis_resumed_handshakes_total",
                        "Resumed sessions admitted, by how revocation was settled: the session's "
                        "stamp held, or the chain was checked again.");
  out += fmt::format("portcullis_resumed_handshakes_total{{revocation=\"stamp\"}} {}\n",
                     resumed_by_stamp_.load(relaxed));
  out += fmt::format("portcullis_resumed_handshakes_total{{revocation=\"checked\"}} {}\n",
                     resumed_checked_.load(relaxed));
  out +=
      "# HELP portcullis_handshake_duration_seconds Successful handshake durations.\n"
      "# TYPE portcullis_handshake_duration_seconds histogram\n";
  handshake_seconds_.render(out, "portcullis_handshake_duration_seconds", "");

  render_counter_header(out, "portcullis_requests_total", "Requests answered, by status class.");
  for (int cls = 1; cls <= 5; ++cls) {
    out += fmt::format("portcullis_requests_total{{code=\"{}xx\"}} {}\n", cls,
                       requests_by_class_[cls].load(relaxed));
  }
  out +=
      "# HELP portcullis_request_duration_seconds Request durations, first byte in to last out.\n"
      "# TYPE portcullis_request_duration_seconds histogram\n";
  request_seconds_.render(out, "portcullis_request_duration_seconds", "");
  render_counter_header(out, "portcullis_bad_requests_total",
                        "Malformed requests refused without forwarding.");
  out += fmt::format("portcullis_bad_requests_total {}\n", bad_requests_.load(relaxed));

  render_counter_header(out, "portcullis_upstream_errors_total", "Upstream failures by kind.");
  for (int i = 0; i < static_cast<int>(UpstreamError::count_); ++i) {
    out += fmt::format("portcullis_upstream_errors_total{{kind=\"{}\"}} {}\n",
                       to_string(static_cast<UpstreamError>(i)), upstream_errors_[i].load(relaxed));
  }
  {
    const std::lock_guard lock(labelled_mutex_);
    render_counter_header(out, "portcullis_authz_denied_total",
                          "Requests refused by a route's allow rules, by route and reason.");
    for (const auto& [labels, n] : authz_denied_) {
      out += fmt::format("portcullis_authz_denied_total{{{}}} {}\n", labels, n);
    }
    render_counter_header(out, "portcullis_upstream_endpoint_events_total",
                          "Endpoint ejections and retries on another endpoint.");
    for (const auto& [labels, n] : upstream_events_) {
      out += fmt::format("portcullis_upstream_endpoint_events_total{{{}}} {}\n", labels, n);
    }
  }
  render_counter_header(out, "portcullis_websocket_tunnels_total",
                        "WebSocket tunnels opened after an upstream's 101.");
  out += fmt::format("portcullis_websocket_tunnels_total {}\n", tunnels_opened_.load(relaxed));
  out +=
      "# HELP portcullis_websocket_tunnels_active WebSocket tunnels currently open.\n"
      "# TYPE portcullis_websocket_tunnels_active gauge\n";
  out += fmt::format("portcullis_websocket_tunnels_active {}\n",
                     std::max<std::int64_t>(0, tunnels_active_.load(relaxed)));
  render_counter_header(out, "portcullis_websocket_tunnel_idle_closes_total",
                        "WebSocket tunnels closed after the idle timeout.");
  out += fmt::format("portcullis_websocket_tunnel_idle_closes_total {}\n",
                     tunnels_idle_closed_.load(relaxed));
  render_counter_header(out, "portcullis_config_reloads_total", "Configuration reloads by result.");
  out += fmt::format("portcullis_config_reloads_total{{result=\"ok\"}} {}\n",
                     reloads_ok_.load(relaxed));
  out += fmt::format("portcullis_config_reloads_total{{result=\"failed\"}} {}\n",
                     reloads_failed_.load(relaxed));
  return out;
}

}  // namespace portcullis::admin
