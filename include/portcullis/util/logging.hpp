#pragma once
// Logging set-up: the diagnostic log (spdlog's default logger, on stderr) and the access log
// (one JSON object per line, to stdout, stderr, a file, or nowhere).
// Thread-safety: configure once at start-up; the loggers themselves are thread-safe.

#include <memory>
#include <string>
#include <string_view>

namespace spdlog {
class logger;
}

namespace portcullis::util {

// Sets the level of the diagnostic log: trace | debug | info | warn | error | off.
// Throws std::invalid_argument for other names.
void setup_logging(std::string_view level);

// "stdout", "stderr", "off" or a file path (appended to). "off" gives no logger (nullptr).
std::shared_ptr<spdlog::logger> make_access_log(const std::string& target);

}  // namespace portcullis::util
