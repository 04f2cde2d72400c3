#pragma once
// What portcullis-bench measures, and the text and JSON reports made of it.
// Thread-safety: a Recorder belongs to one io thread; merge them after the threads have joined.

#include "options.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace portcullis::bench {

struct Sample {
  double end_s = 0;          // completion, seconds since the run started
  double latency_us = 0;     // scheduled (open loop) or actual start to response complete
  double handshake_us = -1;  // TCP connect + TLS handshake, when this request made one
  bool resumed = false;
};

struct Recorder {
  std::vector<Sample> samples;                  // successful requests
  std::map<std::string, std::uint64_t> errors;  // by kind, e.g. "handshake: timeout"
  std::vector<double> error_times_s;
  std::uint64_t full_handshakes = 0, resumed_handshakes = 0, not_resumed = 0;

  void error(const std::string& kind, double at_s) {
    ++errors[kind];
    error_times_s.push_back(at_s);
  }
  void merge(Recorder&& other);
};

// CPU seconds (user + system) of a process, from /proc/PID/stat; negative when unreadable.
double process_cpu_seconds(int pid);

struct RunInfo {
  double wall_s = 0;         // first request scheduled to last one complete
  double client_cpu_s = 0;   // this process, user + system
  double server_cpu_s = -1;  // --server-pid, user + system; negative when not measured
};

// Prints the text report to stdout and, with --json, writes the JSON report.
void report(const Options& options, const Recorder& rec, const RunInfo& info);

}  // namespace portcullis::bench
