// The plugin's cap on connected devices (plugin_opt_max_devices), without a
// broker: how many device connections the plugin let in are connected now,
// and whether one more may come in. mosquitto's own max_connections counts
// sockets per listener, before TLS and CONNECT, and mosquitto 2.0.11 counts a
// closed connection twice (fixed in 2.0.12), so its cap drifts upward on a
// long-running broker; this count is exact. Back ends (the hub, service
// clients) are never counted nor refused here: devices at their cap cannot
// lock them out. broker/tests/test_broker_device_cap.cpp tests it directly,
// python/tests/test_broker_plugin.py through mosquitto.
#pragma once

#include <cstddef>
#include <optional>

namespace devicebound::broker {

/// What a client id's current connection is, as the plugin has it.
enum class connection_kind {
  none,      ///< no live connection (offline, or never seen)
  device,    ///< a connection authenticated as that device
  back_end,  ///< any other connection
};

class device_cap {
 public:
  /// `limit`: at most that many device connections; none: no cap.
  explicit device_cap(std::optional<std::size_t> limit = std::nullopt) noexcept : limit_(limit) {}

  std::optional<std::size_t> limit() const noexcept { return limit_; }
  /// Device connections the plugin let in that have not left.
  std::size_t connected() const noexcept { return connected_; }

  /// May a CONNECT of kind `incoming` (device or back end) come in when its
  /// client id's current connection is `current`? A device taking over a
  /// device connection (the same id reconnecting) replaces it: the old one
  /// leaves as this one comes in, so it needs no free slot.
  bool admits(connection_kind current, connection_kind incoming) const noexcept {
    if (incoming != connection_kind::device || current == connection_kind::device || !limit_)
      return true;
    return connected_ < *limit_;
  }

  /// A CONNECT that `admits` let in: the client id's connection goes from
  /// `current` to `incoming` (a connection taken over is counted out here,
  /// not when mosquitto closes it later).
  void connected(connection_kind current, connection_kind incoming) noexcept {
    left(current);
    if (incoming == connection_kind::device)
      ++connected_;
  }

  /// The client id's connection of kind `kind` left (disconnected, lost,
  /// kicked); `none` changes nothing.
  void left(connection_kind kind) noexcept {
    if (kind == connection_kind::device && connected_ > 0)
      --connected_;
  }

 private:
  std::optional<std::size_t> limit_;
  std::size_t connected_ = 0;
};

}  // namespace devicebound::broker
