#include "portcullis/app/service_notify.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <cstring>
#include <ctime>
#include <string>

namespace portcullis::app {

namespace {

void send(const std::string& state) {
  // unset_environment = 0: reloads and shutdown notify on the same socket later.
  const int rc = sd_notify(0, state.c_str());
  if (rc < 0) spdlog::warn("service manager notification failed: {}", std::strerror(-rc));
}

// A status line is one line: the protocol is newline-separated assignments.
std::string one_line(std::string_view text) {
  std::string out(text);
  for (auto& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

}  // namespace

void notify_ready(std::string_view status) {
  send(fmt::format("READY=1\nSTATUS={}", one_line(status)));
}

void notify_reloading() {
  // systemd relates RELOADING=1 to the reload request by this timestamp (CLOCK_MONOTONIC, µs).
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const auto usec = static_cast<unsigned long long>(now.tv_sec) * 1000000ULL +
                    static_cast<unsigned long long>(now.tv_nsec) / 1000ULL;
  send(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading", usec));
}

void notify_stopping() {
  send("STOPPING=1\nSTATUS=draining connections");
}

void notify_status(std::string_view status) {
  send("STATUS=" + one_line(status));
}

}  // namespace portcullis::app
