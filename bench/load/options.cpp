#include "options.hpp"

#include <boost/program_options.hpp>

#include <fmt/format.h>

#include <iostream>
#include <stdexcept>

namespace portcullis::bench {

namespace po = boost::program_options;

const char* to_string(Mode mode) noexcept {
  switch (mode) {
    case Mode::full:
      return "full";
    case Mode::resume:
      return "resume";
    case Mode::keepalive:
      return "keepalive";
  }
  return "?";
}

std::optional<Options> parse_options(int argc, char** argv) {
  Options o;
  std::string mode = "full", resume_with = "ticket";
  std::uint64_t count = 0;
  po::options_description desc(
      "portcullis-bench: load generator for mTLS endpoints\n"
      "usage: portcullis-bench --cert C --key K --port P [options]\n"
      "options");
  desc.add_options()("help,h", "this text")(
      "mode", po::value(&mode)->default_value(mode),
      "full: a new TCP+TLS connection with a full handshake per request; resume: a new "
      "connection per request resuming the slot's previous session; keepalive: requests back to "
      "back on persistent connections")(
      "resume-with", po::value(&resume_with)->default_value(resume_with),
      "resume mode: ticket (RFC 5077 / TLS 1.3 tickets) or session-id (server cache; TLS 1.2)")(
      "connections,c", po::value(&o.connections)->default_value(o.connections),
      "concurrent connection slots")("duration,d", po::value(&o.duration_s),
                                     "seconds to run (default 10 unless --count)")(
      "count,n", po::value(&count), "total requests to send")(
      "rate,r", po::value(&o.rate),
      "open loop: requests/s overall, spread over the slots; latency counts from the scheduled "
      "start (default: closed loop)")("path", po::value(&o.path)->default_value(o.path),
                                      "request target")(
      "request-size", po::value(&o.request_size)->default_value(0),
      "POST a body of this many bytes (0: GET)")("tls", po::value(&o.tls)->default_value(o.tls),
                                                 "protocol version: 1.2 or 1.3")(
      "groups", po::value(&o.groups), "key exchange groups, e.g. X25519:P-256")(
      "cert", po::value(&o.cert), "client certificate chain (PEM, leaf first)")(
      "key", po::value(&o.key), "client private key (PEM)")(
      "cacert", po::value(&o.cacert),
      "verify the server against these CAs (PEM); without it the server is not verified, which "
      "saves client CPU")("host", po::value(&o.host)->default_value(o.host),
                          "address to connect to")(
      "port,p", po::value(&o.port)->default_value(o.port), "port")(
      "sni", po::value(&o.sni)->default_value(o.sni), "SNI and Host header")(
      "threads,t", po::value(&o.threads)->default_value(o.threads), "io threads")(
      "timeout", po::value(&o.timeout_s)->default_value(o.timeout_s),
      "seconds allowed for each connect, handshake and request")(
      "json", po::value(&o.json), "also write the report as JSON to this file")(
      "server-pid", po::value(&o.server_pid),
      "report this process's CPU time (user+sys from /proc) over the run, per request and per "
      "full handshake")("quiet,q", po::bool_switch(&o.quiet), "no text report");

  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return std::nullopt;
  }
  if (mode == "full") {
    o.mode = Mode::full;
  } else if (mode == "resume") {
    o.mode = Mode::resume;
  } else if (mode == "keepalive") {
    o.mode = Mode::keepalive;
  } else {
    throw std::runtime_error("--mode: '" + mode + "' is not full, resume or keepalive");
  }
  if (resume_with == "ticket") {
    o.resume_with = ResumeWith::ticket;
  } else if (resume_with == "session-id") {
    o.resume_with = ResumeWith::session_id;
    // TLS 1.3 has no session-id resumption: tickets (stateless or stateful) are its only form.
    if (o.tls != "1.2") {
      throw std::runtime_error("--resume-with session-id needs --tls 1.2");
    }
  } else {
    throw std::runtime_error("--resume-with: '" + resume_with + "' is not ticket or session-id");
  }
  if (o.tls != "1.2" && o.tls != "1.3") {
    throw std::runtime_error("--tls: '" + o.tls + "' is not 1.2 or 1.3");
  }
  if (o.cert.empty() || o.key.empty()) {
    throw std::runtime_error("--cert and --key are required: the endpoint requires mTLS");
  }
  if (o.connections < 1 || o.threads < 1) {
    throw std::runtime_error("--connections and --threads must be at least 1");
  }
  if (o.rate < 0 || o.duration_s < 0 || o.timeout_s <= 0) {
    throw std::runtime_error("--rate, --duration and --timeout must be positive");
  }
  if (vm.count("count")) o.count = count;
  if (!o.count && o.duration_s == 0) o.duration_s = 10;
  return o;
}

}  // namespace portcullis::bench
