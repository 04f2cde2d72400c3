#pragma once
// Keeps the CRL index fresh in the background: fetches every CRL source (files, http:// and
// https:// URLs, and with discovery on the CRL Distribution Points of the truststores' CAs and
// of the client certificates the verify path offers through the checker's DiscoveryQueue),
// verifies each CRL against its issuing CA before use, and publishes a new index to the
// CrlChecker. A CRL that fails any check never replaces a good one. Last-good CRLs are kept in
// the cache directory and re-verified on start, so a restart while the CRL server is down still
// enforces revocation.
// Construction also gives the checker its per-issuer rules and, with discovery on, its queue.
// Thread-safety: all methods may be called from any thread; the work runs on its own thread.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/crl_checker.hpp"
#include "portcullis/tls/truststore.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace portcullis::revocation {

struct SourceStatus {
  std::string source;  // URL or file path
  std::string issuer;  // RFC 4514 subject of the CA whose CRL this is, once known
  std::size_t entries = 0;
  std::optional<std::chrono::system_clock::time_point> this_update, next_update, last_fetch,
      last_success;
  std::string crl_number;
  std::string etag;
  std::string last_error;
  std::uint64_t fetched = 0, not_modified = 0, failed = 0, rejected = 0;
  bool loaded = false;      // a verified CRL from this source is in the index
  bool discovered = false;  // found in a client certificate's CRL Distribution Points
};

class CrlRefresher {
 public:
  CrlRefresher(config::Revocation settings,
               std::vector<std::shared_ptr<const tls::Truststore>> truststores,
               std::shared_ptr<CrlChecker> checker);
  ~CrlRefresher();

  // Loads cached CRLs and local files synchronously (so a start enforces them at once), then
  // starts the background thread.
  void start();
  void stop();
  // Fetches every source now.
  void refresh_now();
  // After a reload: verifies CRLs against these truststores from now on, and fetches every
  // source now (local files are read again).
  void update_truststores(std::vector<std::shared_ptr<const tls::Truststore>> truststores);
  // Adds the CRL Distribution Points of `cert` (issued by `issuer`) as sources, as discovery
  // does for certificates seen in handshakes. For check-cert, before start().
  void discover(X509* cert, X509* issuer);

  // Every source has a verified CRL in the index.
  bool all_loaded() const;
  // False while a source of a fail-closed issuer (by the policy that applies to it) has no
  // usable CRL: none loaded, or past nextUpdate beyond the grace. Sources discovered from
  // client certificates do not count: a client must not be able to take the gateway out of
  // service by presenting a certificate whose CRL server is unreachable.
  bool ready() const;
  std::vector<SourceStatus> status() const;
  std::string render_metrics() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace portcullis::revocation
