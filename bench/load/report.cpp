#include "report.hpp"

#include <boost/json.hpp>

#include <fmt/format.h>

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace portcullis::bench {

namespace json = boost::json;

namespace {

struct Percentiles {
  std::size_t n = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
};

// Nearest-rank percentiles over a copy, in milliseconds.
Percentiles percentiles(std::vector<double> us) {
  Percentiles p;
  p.n = us.size();
  if (us.empty()) return p;
  std::sort(us.begin(), us.end());
  const auto at = [&](double q) {
    const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(us.size())));
    return us[std::clamp<std::size_t>(rank, 1, us.size()) - 1] / 1000.0;
  };
  double sum = 0;
  for (double v : us) sum += v;
  p.mean = sum / static_cast<double>(us.size()) / 1000.0;
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.max = us.back() / 1000.0;
  return p;
}

json::object to_json(const Percentiles& p) {
  return {{"count", p.n},    {"mean_ms", p.mean},  {"p50_ms", p.p50}, {"p90_ms", p.p90},
          {"p99_ms", p.p99}, {"p99_9_ms", p.p999}, {"max_ms", p.max}};
}

std::string to_text(const Percentiles& p) {
  return fmt::format("p50 {:.3f}  p90 {:.3f}  p99 {:.3f}  p99.9 {:.3f}  max {:.3f}  mean {:.3f} ms",
                     p.p50, p.p90, p.p99, p.p999, p.max, p.mean);
}

}  // namespace

void Recorder::merge(Recorder&& other) {
  samples.insert(samples.end(), other.samples.begin(), other.samples.end());
  for (const auto& [kind, n] : other.errors) errors[kind] += n;
  error_times_s.insert(error_times_s.end(), other.error_times_s.begin(), other.error_times_s.end());
  full_handshakes += other.full_handshakes;
  resumed_handshakes += other.resumed_handshakes;
  not_resumed += other.not_resumed;
}

double process_cpu_seconds(int pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name may hold spaces and parentheses: fields are counted after the last ')'.
  const auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

void report(const Options& o, const Recorder& rec, const RunInfo& info) {
  std::vector<double> latency, handshake;
  latency.reserve(rec.samples.size());
  for (const auto& s : rec.samples) {
    latency.push_back(s.latency_us);
    if (s.handshake_us >= 0) handshake.push_back(s.handshake_us);
  }
  const auto lat = percentiles(latency);
  const auto hs = percentiles(handshake);
  std::uint64_t errors = 0;
  for (const auto& [kind, n] : rec.errors) errors += n;
  const double ok = static_cast<double>(rec.samples.size());
  const double rps = info.wall_s > 0 ? ok / info.wall_s : 0;
  const double hps = info.wall_s > 0 ? static_cast<double>(rec.full_handshakes) / info.wall_s : 0;
  const auto per = [](double cpu_s, double n) { return n > 0 ? cpu_s * 1e6 / n : 0.0; };

  // Per-second buckets, to see what a swap or a reload does to latency while it happens.
  const auto seconds = static_cast<std::size_t>(std::floor(info.wall_s)) + 1;
  std::vector<std::vector<double>> by_second(seconds);
  std::vector<std::uint64_t> errors_by_second(seconds);
  for (const auto& s : rec.samples)
    by_second[std::min(seconds - 1, static_cast<std::size_t>(s.end_s))].push_back(s.latency_us);
  for (double t : rec.error_times_s)
    ++errors_by_second[std::min(seconds - 1, static_cast<std::size_t>(std::max(t, 0.0)))];

  if (!o.quiet) {
    fmt::print("mode {} tls {} connections {} threads {} {}\n", to_string(o.mode), o.tls,
               o.connections, o.threads,
               o.rate > 0 ? fmt::format("open loop at {:.0f} req/s", o.rate) : "closed loop");
    fmt::print("requests   {:.0f} ok, {} errors in {:.2f} s: {:.1f} req/s\n", ok, errors,
               info.wall_s, rps);
    fmt::print("handshakes {} full ({:.1f}/s), {} resumed, {} expected to resume but did not\n",
               rec.full_handshakes, hps, rec.resumed_handshakes, rec.not_resumed);
    fmt::print("latency    {}\n", to_text(lat));
    if (hs.n) fmt::print("handshake  {}  (TCP connect + TLS)\n", to_text(hs));
    fmt::print("client cpu {:.2f} s, {:.0f} us/request\n", info.client_cpu_s,
               per(info.client_cpu_s, ok));
    if (info.server_cpu_s >= 0) {
      fmt::print("server cpu {:.2f} s, {:.0f} us/request, {:.0f} us/full handshake\n",
                 info.server_cpu_s, per(info.server_cpu_s, ok),
                 per(info.server_cpu_s, static_cast<double>(rec.full_handshakes)));
    }
    for (const auto& [kind, n] : rec.errors) fmt::print("error      {} x {}\n", n, kind);
  }

  if (o.json.empty()) return;
  json::object errors_json;
  for (const auto& [kind, n] : rec.errors) errors_json[kind] = n;
  json::array timeline;
  for (std::size_t i = 0; i < seconds; ++i) {
    const auto p = percentiles(by_second[i]);
    timeline.push_back(json::object{{"second", i},
                                    {"ok", p.n},
                                    {"errors", errors_by_second[i]},
                                    {"p50_ms", p.p50},
                                    {"p99_ms", p.p99},
                                    {"max_ms", p.max}});
  }
  json::object out{
      {"mode", to_string(o.mode)},
      {"resume_with", o.resume_with == ResumeWith::ticket ? "ticket" : "session-id"},
      {"tls", o.tls},
      {"connections", o.connections},
      {"threads", o.threads},
      {"rate", o.rate},
      {"path", o.path},
      {"request_size", o.request_size},
      {"wall_s", info.wall_s},
      {"requests_ok", rec.samples.size()},
      {"errors_total", errors},
      {"errors", std::move(errors_json)},
      {"requests_per_s", rps},
      {"full_handshakes", rec.full_handshakes},
      {"full_handshakes_per_s", hps},
      {"resumed_handshakes", rec.resumed_handshakes},
      {"not_resumed", rec.not_resumed},
      {"latency", to_json(lat)},
      {"handshake", to_json(hs)},
      {"client_cpu_s", info.client_cpu_s},
      {"client_cpu_us_per_request", per(info.client_cpu_s, ok)},
      {"timeline", std::move(timeline)},
  };
  if (info.server_cpu_s >= 0) {
    out["server_pid"] = o.server_pid;
    out["server_cpu_s"] = info.server_cpu_s;
    out["server_cpu_us_per_request"] = per(info.server_cpu_s, ok);
    out["server_cpu_us_per_full_handshake"] =
        per(info.server_cpu_s, static_cast<double>(rec.full_handshakes));
  }
  std::ofstream file(o.json);
  if (!file) throw std::runtime_error("--json: cannot write " + o.json);
  file << json::serialize(out) << "\n";
}

}  // namespace portcullis::bench
