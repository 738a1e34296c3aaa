/// \file transport/mqtt/device.hpp
/// A device's MQTT connection to `devicebound-hub`: over the extension topics
/// (complete, reject, abandon) or as a stock Azure IoT device SDK (complete
/// only, SPEC 1.6).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../clock.hpp"
#include "../../codec/protocol.hpp"
#include "../../codec/topic.hpp"
#include "../../device_id.hpp"
#include "../../errors.hpp"
#include "../../message.hpp"
#include "../../token_source.hpp"
#include "../../transport.hpp"
#include "endpoint.hpp"
#include "options.hpp"

namespace devicebound::mqtt {

/// How a device talks to the hub.
enum class device_mode : std::uint8_t {
  /// As a stock Azure IoT device SDK: `devices/{id}/messages/devicebound/#`,
  /// completion by PUBACK on receipt; no reject, no abandon (SPEC 1.6).
  iothub,
  /// devicebound's extension topics: complete, reject, abandon with lock tokens.
  extended,
};

/// A device's MQTT connection to `devicebound-hub`. Closed until `open()`.
template <device_mode Mode = device_mode::extended>
class device_connection {
 public:
  using clock_type = system_clock;
  static constexpr bool can_reject = Mode == device_mode::extended;
  static constexpr bool can_abandon = Mode == device_mode::extended;

  explicit device_connection(std::string device_id, connection_options options = {}) {
    auto s = std::make_unique<state>();
    s->device_id = std::move(device_id);
    s->id_error = validate_device_id(s->device_id);
    if (options.client_id.empty())
      options.client_id = s->device_id;
    const bool clean = options.clean_session.value_or(false);
    std::vector<std::string> filters;
    typename detail::endpoint::will_for will;
    const std::string id = s->device_id;
    if constexpr (Mode == device_mode::extended) {
      filters.push_back(protocol::client_filter(protocol::party::device, id));
      will = [id](std::string_view conn) {
        return protocol::detach_topic(protocol::party::device, id, conn);
      };
    } else {
      filters.push_back(codec::devicebound_topic_filter(id));
    }
    const std::string client = options.client_id;
    s->endpoint = std::make_unique<detail::endpoint>(
        std::move(options), client, protocol::party::device, clean, std::move(filters),
        std::move(will), Mode == device_mode::extended);
    state_ = std::move(s);
  }

  device_connection(device_connection&&) noexcept = default;
  device_connection& operator=(device_connection&&) = delete;
  device_connection(const device_connection&) = delete;

  ~device_connection() {
    if (state_)
      close();
  }

  std::string_view device_id() const noexcept { return state_->device_id; }
  clock_type clock() const { return {}; }
  const connection_options& options() const noexcept { return state_->endpoint->options(); }
  /// TCP sockets the last connect set TCP_NODELAY on (for tests and logs).
  int nodelay_sockets() const noexcept { return state_->endpoint->nodelay_sockets(); }

  /// Connects and subscribes. An invalid device id is 400004.
  result<void> open() {
    if (!state_->id_error)
      return state_->id_error.error();
    return state_->endpoint->open();
  }

  /// Says goodbye to the hub (extended: its locks stay until they expire) and disconnects.
  void close() { state_->endpoint->close(Mode == device_mode::extended); }

  bool is_open() const { return state_->endpoint->is_open(); }

  /// The next message, locked for this device; nullopt if none within `timeout`.
  /// Extended: the first receive on a connection attaches (tells the hub this
  /// device takes messages, up to `prefetch` at a time); 404001 if the hub does
  /// not know the device.
  result<std::optional<message>> receive(duration timeout, std::stop_token stop = {}) {
    auto& ep = *state_->endpoint;
    const time_point deadline = devicebound::saturating_add(system_clock{}.now(), timeout);
    for (;;) {
      auto p =
          Mode == device_mode::extended
              ? ep.next_attached_push(protocol::party::device, state_->device_id, deadline, stop)
              : ep.next_push(deadline, stop);
      if (!p)
        return p.error();
      if (!*p)
        return std::optional<message>{};
      auto m = decode(**p);
      if (m)
        return std::optional<message>(std::move(*m));
      // Not a message of ours (or malformed): skip it.
    }
  }

  /// Extended: settles at the hub (412002 if the lock expired). IoT Hub mode:
  /// the PUBACK already went out on receipt; this only forgets the token.
  result<void> complete(const lock_token& token) {
    if constexpr (Mode == device_mode::extended) {
      return settle(protocol::op_complete, token);
    } else {
      std::lock_guard<std::mutex> g(state_->mutex);
      if (state_->received.erase(token) == 0)
        return make_error(errc::device_message_lock_lost,
                          "lock token " + token.to_string() + " is unknown or already completed");
      return {};
    }
  }

  /// Dead-letters a locked message (extended mode only).
  result<void> reject(const lock_token& token) requires(Mode == device_mode::extended) {
    return settle(protocol::op_reject, token);
  }

  /// Returns a locked message to the queue, delivery count + 1 (extended mode only).
  result<void> abandon(const lock_token& token) requires(Mode == device_mode::extended) {
    return settle(protocol::op_abandon, token);
  }

 private:
  struct state {
    std::string device_id;
    result<void> id_error;
    std::unique_ptr<detail::endpoint> endpoint;
    std::mutex mutex;
    std::set<lock_token> received;     ///< guarded by mutex (IoT Hub mode)
    std::uint64_t local_sequence = 0;  ///< guarded by mutex (IoT Hub mode)
    token_source tokens = system_token_source();
  };

  result<message> decode(const detail::endpoint::push& p) {
    const std::string& id = state_->device_id;
    if constexpr (Mode == device_mode::extended) {
      const std::string head =
          protocol::push_head(protocol::party::device, id, protocol::push_message);
      if (!p.topic.starts_with(head))
        return make_error(errc::malformed, "not a delivery");
      std::string conn;
      auto m = protocol::decode_device_message(std::string_view(p.topic).substr(head.size()),
                                               p.payload, &conn);
      // A push for an earlier connection (kept by the broker's session) has a lock
      // that expired or will: the hub delivers that message again on this one.
      if (m && conn != state_->endpoint->connection_id())
        return make_error(errc::device_message_lock_lost, "a delivery for an earlier connection");
      return m;
    } else {
      auto d = codec::decode_devicebound_topic(p.topic);
      if (!d)
        return d.error();
      message m = std::move(d->message);
      m.body = p.payload;
      std::lock_guard<std::mutex> g(state_->mutex);
      lock_token t;
      do {
        t = state_->tokens();
      } while (t.is_nil() || state_->received.count(t) != 0);
      state_->received.insert(t);
      m.lock_token = t;
      m.sequence_number = ++state_->local_sequence;  // local order: IoT Hub sends none
      return m;
    }
  }

  result<void> settle(std::string_view op, const lock_token& token) {
    auto& ep = *state_->endpoint;
    auto r =
        ep.request(protocol::settle_request(protocol::party::device, state_->device_id, op, token),
                   {}, ep.options().request_timeout);
    if (!r)
      return r.error();
    return {};
  }

  std::unique_ptr<state> state_;
};

/// A device connection as a stock Azure IoT device SDK has it (complete only).
using iothub_device_connection = device_connection<device_mode::iothub>;
/// A device connection over devicebound's extension topics.
using extended_device_connection = device_connection<device_mode::extended>;

static_assert(device_transport<extended_device_connection>);
static_assert(device_transport<iothub_device_connection>);
static_assert(transport_traits<extended_device_connection>::can_reject);
static_assert(transport_traits<extended_device_connection>::can_abandon);
static_assert(!transport_traits<iothub_device_connection>::can_reject);
static_assert(!transport_traits<iothub_device_connection>::can_abandon);

}  // namespace devicebound::mqtt
