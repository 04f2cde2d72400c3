#pragma once
// Command-line options of portcullis-bench, the mTLS load generator.
// Thread-safety: a plain value, read-only once parsed.

#include <cstdint>
#include <optional>
#include <string>

namespace portcullis::bench {

enum class Mode { full, resume, keepalive };
enum class ResumeWith { ticket, session_id };

struct Options {
  Mode mode = Mode::full;
  ResumeWith resume_with = ResumeWith::ticket;
  int connections = 1;                 // concurrent connection slots
  double duration_s = 0;               // 0 with count unset: 10 s
  std::optional<std::uint64_t> count;  // total requests
  double rate = 0;                     // requests/s overall; 0 = closed loop
  std::string path = "/";
  std::size_t request_size = 0;   // POST body bytes; 0 = GET
  std::string tls = "1.3";        // "1.2" | "1.3"
  std::string groups;             // OpenSSL list, e.g. "X25519:P-256"
  std::string cert, key, cacert;  // client certificate (chain), key, server CA (optional)
  std::string host = "127.0.0.1";
  std::uint16_t port = 8443;
  std::string sni = "localhost";
  int threads = 1;        // io threads
  double timeout_s = 10;  // per connect / handshake / request
  std::string json;       // write the JSON report here
  int server_pid = 0;     // report this process's CPU time per request
  bool quiet = false;
};

// Parses argv. Prints usage and returns nullopt on --help; throws std::runtime_error with a
// readable message on bad input.
std::optional<Options> parse_options(int argc, char** argv);

const char* to_string(Mode mode) noexcept;

}  // namespace portcullis::bench
