#pragma once
// Plain configuration structs, produced by load_config() and never changed afterwards.
// Thread-safety: immutable once built; share them through std::shared_ptr<const ...>.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace portcullis::config {

using Duration = std::chrono::milliseconds;

struct HostPort {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;  // "127.0.0.1:8443", "[::1]:8443"
};

// Stapling an OCSP response for the listener's own certificate (TLS status_request).
struct OcspStapling {
  bool enabled = false;
  std::string responder;                    // http:// URL; empty = the certificate's AIA OCSP URI
  Duration refresh{std::chrono::hours(1)};  // upper bound between fetches
  std::filesystem::path file;               // a pre-fetched DER response; set = no fetching
  Duration fetch_timeout{std::chrono::seconds(10)};
};

struct ServerTls {
  std::filesystem::path certificate;  // PEM: leaf first, then its intermediates
  std::filesystem::path private_key;  // PEM
  std::string min_version = "1.2";    // "1.2" | "1.3"
  std::vector<std::string> groups;    // empty = OpenSSL's defaults
  std::string ciphers;                // TLS 1.2 cipher list; empty = built-in strong default
  std::string ciphersuites;           // TLS 1.3 suites; empty = OpenSSL's default
  Duration handshake_timeout{std::chrono::seconds(10)};
  // Stateless tickets (the session travels, encrypted, with the client) or, when off, sessions
  // kept in this process's cache (a TLS 1.3 ticket then only names one). Unset: stateless only
  // with shared ticket keys; a process of its own resumes faster from its cache.
  std::optional<bool> session_tickets;
  std::filesystem::path session_ticket_keys;  // shared key file; empty = a random key per start
  Duration session_lifetime{std::chrono::minutes(5)};  // tickets and cached sessions
  int session_cache_size = 20480;                      // sessions kept; 0 = no cache

  bool stateless_tickets() const { return session_tickets.value_or(!session_ticket_keys.empty()); }
  OcspStapling ocsp_stapling;
};

struct ClientAuth {
  std::filesystem::path truststore;  // PEM bundle of roots and intermediates
  // Maximum number of intermediate CA certificates between the client certificate and the
  // trust anchor (OpenSSL's verify depth, NGINX's ssl_verify_depth).
  int max_chain_depth = 4;
  bool send_ca_names = true;  // list the truststore's roots in the CertificateRequest
  // Client chains remembered once verified, so that a client seen before is not verified again
  // (its revocation is still checked every time); 0 = verify every chain afresh.
  int chain_cache_size = 10000;
};

enum class IdentityPreset { standard, rfc9440, xfcc, aws_alb };  // "default" in YAML = standard

struct RouteMatch {
  std::string host = "*";  // "*", exact host, or "*.suffix"
  std::string path_prefix = "/";
};

// One authorization rule: every field that is set must match (empty = not part of the rule).
struct AllowRule {
  std::vector<std::pair<std::string, std::string>> subject;  // attribute (CN, O, OU, ...) → glob
  std::string issuer;                                        // glob on the RFC 4514 issuer
  std::string san_dns, san_uri, san_email, san_ip;           // globs, by SAN type
  std::string fingerprint_sha256;                            // lowercase hex, exact
  std::string spki_sha256;                                   // lowercase hex, exact
  int line = 0;
};

struct Route {
  RouteMatch match;
  std::string upstream;              // key into Config::upstreams
  bool has_allow = false;            // false: every verified client is admitted
  std::vector<AllowRule> allow;      // admitted when any rule matches
  std::uint64_t max_body_bytes = 0;  // 0 = unlimited
};

struct Listener {
  std::string name;
  HostPort address;
  ServerTls tls;
  ClientAuth client_auth;
  IdentityPreset identity_headers = IdentityPreset::standard;
  std::vector<Route> routes;
  Duration header_timeout{std::chrono::seconds(30)};  // to receive a request's header
  Duration idle_timeout{std::chrono::seconds(60)};    // keep-alive between requests
  std::uint64_t max_header_bytes = 16 * 1024;
  int max_connections = 10000;
};

enum class Balance { round_robin, least_outstanding };

// TLS to an upstream's endpoints: the upstream's certificate must chain to `ca` and match
// `server_name` (also sent as SNI), or the endpoint host when that is empty. With
// certificate and private_key, the gateway presents that certificate (mutual TLS).
struct UpstreamTls {
  std::filesystem::path ca;  // PEM bundle
  std::string server_name;
  std::filesystem::path certificate;  // PEM: leaf first, then its intermediates
  std::filesystem::path private_key;  // PEM
};

struct Upstream {
  std::string name;
  std::vector<HostPort> endpoints;  // IP addresses or DNS names
  Balance balance = Balance::round_robin;
  Duration connect_timeout{std::chrono::seconds(5)};
  Duration response_timeout{std::chrono::seconds(30)};  // until the response header arrives
  Duration idle_timeout{std::chrono::seconds(60)};      // pooled keep-alive connections
  int max_idle_connections = 32;                        // per endpoint and io thread
  // Passive health: an endpoint whose connects fail `max_failures` times in a row is left out
  // of balancing for `ejection_time` (0 = never eject).
  int max_failures = 3;
  Duration ejection_time{std::chrono::seconds(30)};
  Duration resolve_interval{std::chrono::seconds(30)};  // how long a DNS answer is reused
  // Send an idempotent request without a body once more, to another endpoint, when the first
  // attempt failed before any response byte.
  bool retry = true;
  std::optional<UpstreamTls> tls;  // absent = plain HTTP
};

enum class RevocationMode { none, crl, ocsp, ocsp_then_crl, crl_then_ocsp };
enum class OnUnknown { deny, allow };

struct CrlSource {
  std::string url;             // http:// or https://
  std::filesystem::path file;  // or a local file
};

// What "unknown" means for certificates issued by one CA, overriding Revocation::on_unknown.
// The CA is named by its subject (RFC 4514, as /status and X-Client-Cert-Issuer print it) or by
// the SHA-256 fingerprint of its certificate (a CA in a truststore).
struct IssuerPolicy {
  std::string subject;  // RFC 4514 text as written
  // (type, value) in the order written; types in OpenSSL's spelling ("CN", "emailAddress").
  std::vector<std::pair<std::string, std::string>> subject_rdns;
  std::string sha256;                      // lowercase hex, no colons
  OnUnknown on_unknown = OnUnknown::deny;  // the global on_unknown when not written
  std::optional<RevocationMode> mode;      // overrides Revocation::mode for this CA's certificates
  std::string ocsp_responder;  // http:// URL asked instead of the certificates' AIA OCSP URI
  // Where the rule is, for errors found once the truststores are loaded.
  std::string file;
  int line = 0;
  std::string key;  // "revocation.issuers[0]"
};

struct Revocation {
  RevocationMode mode = RevocationMode::none;
  OnUnknown on_unknown = OnUnknown::deny;
  std::vector<IssuerPolicy> issuers;  // first match wins
  struct Crl {
    std::vector<CrlSource> sources;
    bool discover = false;
    Duration refresh_interval{std::chrono::seconds(60)};
    Duration stale_grace{std::chrono::hours(1)};
    std::filesystem::path cache_dir;
    Duration fetch_timeout{std::chrono::seconds(30)};  // one fetch, connect to last byte
    std::uint64_t max_size = 512ULL * 1024 * 1024;     // largest CRL body accepted
    std::filesystem::path https_ca;  // CAs for https:// sources; empty = OpenSSL's default store
  } crl;
  // OCSP checks of client certificates (modes ocsp, ocsp_then_crl, crl_then_ocsp).
  struct Ocsp {
    Duration timeout{std::chrono::seconds(5)};  // one query, connect to last byte
    bool nonce = true;
    bool get = false;  // GET for requests whose encoding fits in 255 bytes, else POST
    Duration clock_skew{std::chrono::minutes(5)};
    Duration min_ttl{std::chrono::minutes(1)};       // shortest time a status is cached
    Duration max_ttl{std::chrono::hours(24)};        // longest, whatever nextUpdate says
    Duration failure_ttl{std::chrono::seconds(10)};  // a failed query is retried after this
    Duration refresh_recent{std::chrono::hours(1)};  // renew statuses seen within; 0 = off
    std::uint64_t max_entries = 100000;
    bool check_intermediates = false;  // also ask about CA certificates below the anchor
  } ocsp;
};

struct Admin {
  HostPort address{"127.0.0.1", 9901};
};

struct Logging {
  std::string level = "info";         // trace | debug | info | warn | error | off
  std::string access_log = "stdout";  // stdout | stderr | off | a file path
};

struct Runtime {
  int io_threads = 0;  // 0 = number of cores
  Duration shutdown_grace{std::chrono::seconds(10)};
  // Reload when the config file or a file it names (certificate, key, truststore, ticket keys,
  // local CRL) changes, checked this often; 0 = only on SIGHUP and POST /reload.
  Duration watch_interval{0};
};

struct Config {
  std::filesystem::path source;  // the config file (absolute)
  std::vector<Listener> listeners;
  std::map<std::string, Upstream> upstreams;
  Revocation revocation;
  Admin admin;
  Logging logging;
  Runtime runtime;
  // Where each key was written ("listeners[0].tls.private_key" → 6), so that errors found
  // later (a truststore or key that does not load) can still point at the line.
  std::map<std::string, int> key_lines;
  // The line of `key`, or of its closest enclosing key; 0 when unknown.
  int line_of(std::string_view key) const;
};

// "portcullis.yaml:14: listeners[0].client_auth.truststore: file not found: /etc/..."
struct Diagnostic {
  std::string file;
  int line = 0;  // 1-based; 0 when unknown
  std::string key;
  std::string message;
  std::string to_string() const;
};

class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<Diagnostic> errors);
  const std::vector<Diagnostic>& errors() const { return errors_; }

 private:
  std::vector<Diagnostic> errors_;
};

struct LoadResult {
  Config config;
  std::vector<Diagnostic> warnings;
};

// Reads, parses and validates a config file. Relative paths are resolved against the file's
// directory. Throws ConfigError carrying every error found (not only the first).
LoadResult load_config(const std::filesystem::path& file);

// Same, from text; `file` names the source in messages and anchors relative paths.
LoadResult parse_config(std::string_view yaml, const std::filesystem::path& file);

// "250ms", "30s", "5m", "1h", "1d"; throws std::invalid_argument with a readable message.
Duration parse_duration(std::string_view text);
// "512", "64KiB", "64MiB", "1GiB", "10kB", "10MB"; throws std::invalid_argument.
std::uint64_t parse_size(std::string_view text);

std::string_view to_string(IdentityPreset preset);
std::string_view to_string(RevocationMode mode);

}  // namespace portcullis::config
