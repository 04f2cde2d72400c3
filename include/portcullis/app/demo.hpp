#pragma once
// `portcullis demo`: a throwaway PKI, the built-in echo upstream and the gateway, all on
// loopback, with the curl lines to try each case.

#include <cstdint>
#include <filesystem>

namespace portcullis::app {

struct DemoOptions {
  std::filesystem::path dir = "portcullis-demo";
  std::uint16_t port = 8443;
  std::uint16_t admin_port = 9901;
  std::uint16_t upstream_port = 9000;
};

int run_demo(const DemoOptions& options);

}  // namespace portcullis::app
