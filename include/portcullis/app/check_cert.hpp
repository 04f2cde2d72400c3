#pragma once
// `portcullis check-cert`: why would this client certificate be admitted or refused?
// Evaluates a certificate against the configured truststore, chain rules, revocation data and
// (optionally) a route's authorization rules, printing the verdict of each step.

#include <optional>
#include <string>
#include <vector>

namespace portcullis::app {

struct CheckCertOptions {
  std::string config;
  std::string cert;               // PEM: the leaf, optionally followed by intermediates
  std::string chain;              // optional PEM of intermediates
  std::string listener;           // listener name; default the first
  std::optional<long long> at;    // evaluate at this Unix time instead of now
  std::vector<std::string> crls;  // extra CRL files
  std::string host, path;         // optional: check the route's allow rules
  bool offline = false;           // do not fetch CRL URLs (use cache and files only)
};

// 0 admitted, 1 refused, 2 the check itself could not run.
int check_cert(const CheckCertOptions& options);

}  // namespace portcullis::app
