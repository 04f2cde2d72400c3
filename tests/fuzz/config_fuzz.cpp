// libFuzzer target: configuration loading from arbitrary YAML text. The files a configuration
// names (certificate, key, truststore, CRL) exist in a scratch directory, so that valid
// configurations get past the file checks and on to the rest of validation.
//
// Invariants: parse_config returns a configuration or throws ConfigError, nothing else; a
// ConfigError carries at least one diagnostic, each naming the file, a line within the text
// (0 only when no line applies), and a message; a returned configuration has a listener, an
// upstream, and routes that all name an existing upstream; the same text gives the same result
// twice.

#include "portcullis/config/config.hpp"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

using namespace portcullis;
namespace fs = std::filesystem;

namespace {

const fs::path& config_file() {
  static const fs::path file = [] {
    const auto dir = fs::temp_directory_path() / "portcullis-config-fuzz";
    fs::create_directories(dir);
    for (const char* name : {"server-chain.pem", "server.key", "truststore.pem", "root.crl",
                             "ca.pem", "client.pem", "client.key", "response.der"}) {
      std::ofstream(dir / name) << "placeholder\n";
    }
    return dir / "portcullis.yaml";
  }();
  return file;
}

struct Outcome {
  bool ok = false;
  std::size_t listeners = 0, upstreams = 0, diagnostics = 0;
  bool operator==(const Outcome&) const = default;
};

void check_diagnostic(const config::Diagnostic& d, int lines) {
  if (d.file != config_file().string() || d.message.empty()) std::abort();
  if (d.line < 0 || d.line > lines + 1) std::abort();
  const auto text = d.to_string();
  const auto prefix = d.line > 0 ? d.file + ":" + std::to_string(d.line) + ": " : d.file + ": ";
  if (text.rfind(prefix, 0) != 0) std::abort();
}

Outcome load(std::string_view yaml, int lines) {
  Outcome out;
  try {
    // Relative paths in the text resolve against the directory of this (absolute) file name.
    const auto result = config::parse_config(yaml, config_file());
    const auto& cfg = result.config;
    out.ok = true;
    out.listeners = cfg.listeners.size();
    out.upstreams = cfg.upstreams.size();
    out.diagnostics = result.warnings.size();
    if (cfg.listeners.empty() || cfg.upstreams.empty()) std::abort();
    for (const auto& listener : cfg.listeners) {
      if (listener.name.empty() || listener.routes.empty()) std::abort();
      for (const auto& route : listener.routes) {
        if (!cfg.upstreams.count(route.upstream)) std::abort();
      }
    }
    for (const auto& [name, upstream] : cfg.upstreams) {
      if (upstream.endpoints.empty()) std::abort();
    }
    for (const auto& w : result.warnings) check_diagnostic(w, lines);
  } catch (const config::ConfigError& e) {
    if (e.errors().empty() || std::string_view(e.what()).empty()) std::abort();
    out.diagnostics = e.errors().size();
    for (const auto& d : e.errors()) check_diagnostic(d, lines);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view yaml(reinterpret_cast<const char*>(data), size);
  int lines = 1;
  for (char c : yaml) lines += c == '\n' || c == '\r';
  const auto first = load(yaml, lines);
  if (!(load(yaml, lines) == first)) std::abort();
  return 0;
}
