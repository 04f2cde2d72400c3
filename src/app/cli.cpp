#include "portcullis/app/cli.hpp"

#include "portcullis/app/check_cert.hpp"
#include "portcullis/app/demo.hpp"
#include "portcullis/app/gateway.hpp"
#include "portcullis/config/config.hpp"
#include "portcullis/echo/echo_server.hpp"
#include "portcullis/proxy/snapshot.hpp"
#include "portcullis/revocation/checker_factory.hpp"

#include <openssl/opensslv.h>
#include <boost/program_options.hpp>

#include <iostream>

namespace portcullis::app {

namespace po = boost::program_options;

namespace {

constexpr const char* usage = R"(usage:
  portcullis --config FILE                 run the gateway
  portcullis --check-config --config FILE  validate FILE (and its certificates), print warnings
  portcullis demo [--dir DIR] [--port N] [--admin-port N] [--upstream-port N]
  portcullis check-cert --config FILE --cert CERT.pem [--chain FILE] [--listener NAME]
             [--at UNIX_TIME] [--crl FILE]... [--host HOST] [--path PATH] [--offline]
  portcullis echo-upstream --listen HOST:PORT [--threads N]
                           [--tls-cert FILE --tls-key FILE [--require-client-ca FILE]]
  portcullis --version
)";

void print_errors(const config::ConfigError& e) {
  for (const auto& d : e.errors()) std::cerr << "error: " << d.to_string() << "\n";
}

int check_config(const std::string& file) {
  try {
    auto loaded = config::load_config(file);
    const auto warnings = loaded.warnings;
    // Building the snapshot loads the truststores and TLS material, as a start would.
    auto checkers = revocation::make_checkers(loaded.config.revocation);
    auto snapshot = proxy::build_snapshot(std::move(loaded), checkers.checker);
    for (const auto& w : warnings) std::cerr << "warning: " << w.to_string() << "\n";
    for (const auto& l : snapshot->listeners) {
      for (const auto& w : l->truststore->summary().warnings) {
        std::cerr << "warning: " << l->truststore->summary().path.string() << ": " << w << "\n";
      }
    }
    std::cout << "configuration OK: " << file << "\n";
    return 0;
  } catch (const config::ConfigError& e) {
    print_errors(e);
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << file << ": " << e.what() << "\n";
    return 1;
  }
}

int run_gateway(const std::string& file) {
  try {
    Gateway gateway(config::load_config(file));
    return gateway.run();
  } catch (const config::ConfigError& e) {
    print_errors(e);
  } catch (const std::exception& e) {
    std::cerr << "error: " << file << ": " << e.what() << "\n";
  }
  std::cerr << "portcullis: not started\n";
  return 1;
}

int demo_command(const std::vector<std::string>& args) {
  po::options_description options("demo options");
  DemoOptions demo;
  options.add_options()("dir", po::value<std::string>()->default_value(demo.dir.string()),
                        "directory for the PKI and config")(
      "port", po::value<std::uint16_t>()->default_value(demo.port), "gateway port")(
      "admin-port", po::value<std::uint16_t>()->default_value(demo.admin_port), "admin port")(
      "upstream-port", po::value<std::uint16_t>()->default_value(demo.upstream_port),
      "echo upstream port");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(options).run(), vm);
  po::notify(vm);
  demo.dir = vm["dir"].as<std::string>();
  demo.port = vm["port"].as<std::uint16_t>();
  demo.admin_port = vm["admin-port"].as<std::uint16_t>();
  demo.upstream_port = vm["upstream-port"].as<std::uint16_t>();
  return run_demo(demo);
}

int check_cert_command(const std::vector<std::string>& args) {
  po::options_description options("check-cert options");
  options.add_options()("config,c", po::value<std::string>()->required(), "configuration file")(
      "cert", po::value<std::string>()->required(),
      "client certificate (PEM, may include its chain)")("chain", po::value<std::string>(),
                                                         "intermediates (PEM)")(
      "listener", po::value<std::string>(), "listener name (default: the first)")(
      "at", po::value<long long>(), "evaluate at this Unix time")(
      "crl", po::value<std::vector<std::string>>()->composing(), "extra CRL file (repeatable)")(
      "host", po::value<std::string>(), "request host, to check the route's rules")(
      "path", po::value<std::string>(), "request path, to check the route's rules")(
      "offline", "do not fetch CRL URLs");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(options).run(), vm);
  po::notify(vm);
  CheckCertOptions o;
  o.config = vm["config"].as<std::string>();
  o.cert = vm["cert"].as<std::string>();
  if (vm.count("chain")) o.chain = vm["chain"].as<std::string>();
  if (vm.count("listener")) o.listener = vm["listener"].as<std::string>();
  if (vm.count("at")) o.at = vm["at"].as<long long>();
  if (vm.count("crl")) o.crls = vm["crl"].as<std::vector<std::string>>();
  if (vm.count("host")) o.host = vm["host"].as<std::string>();
  if (vm.count("path")) o.path = vm["path"].as<std::string>();
  o.offline = vm.count("offline") > 0;
  return check_cert(o);
}

int echo_command(const std::vector<std::string>& args) {
  po::options_description options("echo-upstream options");
  options.add_options()("listen", po::value<std::string>()->required(), "HOST:PORT")(
      "threads", po::value<int>()->default_value(1), "io threads")(
      "tls-cert", po::value<std::string>(), "serve TLS with this certificate chain (PEM)")(
      "tls-key", po::value<std::string>(), "the certificate's private key (PEM)")(
      "require-client-ca", po::value<std::string>(), "require a client certificate from these CAs");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(options).run(), vm);
  po::notify(vm);
  echo::EchoTls tls;
  if (vm.count("tls-cert")) tls.certificate = vm["tls-cert"].as<std::string>();
  if (vm.count("tls-key")) tls.private_key = vm["tls-key"].as<std::string>();
  if (vm.count("require-client-ca")) tls.client_ca = vm["require-client-ca"].as<std::string>();
  if (tls.certificate.empty() != tls.private_key.empty() ||
      (tls.certificate.empty() && !tls.client_ca.empty())) {
    std::cerr << "echo-upstream: --tls-cert and --tls-key go together; --require-client-ca "
                 "needs them\n";
    return 2;
  }
  return echo::run_echo_upstream(vm["listen"].as<std::string>(), vm["threads"].as<int>(), tls);
}

}  // namespace

int main_entry(int argc, char** argv) {
  try {
    if (argc >= 2 && std::string_view(argv[1]) == "demo") {
      return demo_command(std::vector<std::string>(argv + 2, argv + argc));
    }
    if (argc >= 2 && std::string_view(argv[1]) == "check-cert") {
      return check_cert_command(std::vector<std::string>(argv + 2, argv + argc));
    }
    if (argc >= 2 && std::string_view(argv[1]) == "echo-upstream") {
      return echo_command(std::vector<std::string>(argv + 2, argv + argc));
    }
    po::options_description options("options");
    options.add_options()("config,c", po::value<std::string>(), "configuration file (YAML)")(
        "check-config", "validate the configuration and exit")("version", "print the version")(
        "help,h", "this help");
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, options), vm);
    po::notify(vm);
    if (vm.count("help")) {
      std::cout << usage << "\n" << options;
      return 0;
    }
    if (vm.count("version")) {
      std::cout << "portcullis " << PORTCULLIS_VERSION << " (" << OPENSSL_VERSION_TEXT << ")\n";
      return 0;
    }
    if (!vm.count("config")) {
      std::cerr << "portcullis: --config FILE is required\n" << usage;
      return 2;
    }
    const auto file = vm["config"].as<std::string>();
    return vm.count("check-config") ? check_config(file) : run_gateway(file);
  } catch (const po::error& e) {
    std::cerr << "portcullis: " << e.what() << "\n" << usage;
    return 2;
  }
}

}  // namespace portcullis::app
