// portcullis-bench: an HTTP/1.1 load generator that presents a client certificate, for
// measuring mTLS endpoints (full handshakes, resumed handshakes, keep-alive requests).
// See bench/README.md.

#include "load_client.hpp"
#include "options.hpp"
#include "report.hpp"

#include <fmt/format.h>

#include <exception>

int main(int argc, char** argv) {
  using namespace portcullis::bench;
  try {
    const auto options = parse_options(argc, argv);
    if (!options) return 0;
    LoadClient client(*options);
    RunInfo info;
    const auto recorder = client.run(info);
    report(*options, recorder, info);
    return recorder.samples.empty() ? 1 : 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "portcullis-bench: {}\n", e.what());
    return 2;
  }
}
