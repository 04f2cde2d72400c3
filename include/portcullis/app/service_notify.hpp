#pragma once
// Tells the service manager what the gateway is doing (systemd's Type=notify protocol): ready,
// reloading, stopping, and a one-line status. Does nothing when not started by systemd (no
// NOTIFY_SOCKET in the environment), so callers need not check.
// Thread-safety: safe from any thread.

#include <string_view>

namespace portcullis::app {

void notify_ready(std::string_view status);
// Sent before a reload starts; notify_ready() ends it, whether the reload succeeded or not.
void notify_reloading();
void notify_stopping();
void notify_status(std::string_view status);

}  // namespace portcullis::app
