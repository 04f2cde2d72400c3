#include "portcullis/util/logging.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

namespace portcullis::util {

void setup_logging(std::string_view level) {
  const auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    throw std::invalid_argument("unknown log level '" + std::string(level) + "'");
  }
  static const bool once = [] {
    auto logger = std::make_shared<spdlog::logger>(
        "portcullis", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
    spdlog::set_default_logger(logger);
    return true;
  }();
  (void)once;
  spdlog::set_level(parsed);
  // Warnings and errors must reach the journal even when the process dies right after.
  spdlog::flush_on(spdlog::level::warn);
}

std::shared_ptr<spdlog::logger> make_access_log(const std::string& target) {
  spdlog::sink_ptr sink;
  if (target == "stdout") {
    sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
  } else if (target == "stderr") {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else if (target == "off") {
    return nullptr;  // sessions then skip building the line at all
  } else {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(target);
  }
  auto logger = std::make_shared<spdlog::logger>("access", sink);
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::info);
  // Access lines are flushed as they are written so `tail -f` and log shippers see them now.
  logger->flush_on(spdlog::level::info);
  return logger;
}

}  // namespace portcullis::util
