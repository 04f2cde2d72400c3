#pragma once
// The running gateway: io threads, listeners, the admin listener, signals, reload and the
// shutdown sequence (stop accepting → finish in-flight requests within the grace → exit).
// Thread-safety: construct and run() on one thread; request_shutdown() and request_reload()
// are safe from any thread.

#include "portcullis/config/config.hpp"

#include <filesystem>
#include <functional>
#include <memory>

namespace portcullis::app {

class Gateway {
 public:
  // Builds the first snapshot (truststores, TLS contexts); throws with a message naming the file
  // and key on failure, before anything listens.
  explicit Gateway(config::LoadResult loaded);
  ~Gateway();

  // Binds, serves until SIGINT/SIGTERM (or request_shutdown()), then drains. `on_ready` runs once
  // every listener is bound. Returns the process exit code.
  int run(std::function<void()> on_ready = {});

  void request_shutdown();
  void request_reload();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace portcullis::app
