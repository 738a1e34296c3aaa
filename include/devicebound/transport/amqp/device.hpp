/// \file transport/amqp/device.hpp
/// A device's AMQP connection to IoT Hub or `devicebound-hub`: the receiver
/// link `/devices/{id}/messages/devicebound` (SPEC 10.13), settled with
/// `accepted` (complete), `rejected` (reject) or `released` (abandon)
/// (SPEC 10.15): full settlement, unlike MQTT to IoT Hub.
#pragma once

#include <memory>
#include <optional>
#include <proton/binary.hpp>
#include <proton/error.hpp>
#include <proton/message.hpp>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

#include "../../auth/connection_string.hpp"
#include "../../clock.hpp"
#include "../../codec/amqp.hpp"
#include "../../device_id.hpp"
#include "../../errors.hpp"
#include "../../message.hpp"
#include "../../transport.hpp"
#include "connection.hpp"
#include "options.hpp"

namespace devicebound::amqp {

/// A device's AMQP connection. Closed until `open()`.
class device_connection {
 public:
  using clock_type = system_clock;
  using options_type = connection_options;
  static constexpr bool can_reject = true;
  static constexpr bool can_abandon = true;

  /// `options.credentials` must name a device (`DeviceId`); otherwise `open()`
  /// fails with 400004.
  explicit device_connection(connection_options options) {
    auto s = std::make_unique<state>();
    const auto& cs = options.credentials;
    if (!cs.device_id)
      s->id_error = make_error(errc::argument_invalid,
                               "a device connection string needs DeviceId (HostName=...;"
                               "DeviceId=...;SharedAccessKey=...)");
    else if (cs.module_id)
      s->id_error = make_error(errc::not_supported, "module identities receive no C2D messages");
    else if (cs.x509)
      s->id_error = make_error(errc::not_supported, "x509 identities are not supported over AMQP");
    else if (auto v = validate_device_id(*cs.device_id); !v)
      s->id_error = v.error();
    if (cs.device_id)
      s->device_id = *cs.device_id;
    detail::link_plan plan;
    if (s->id_error) {
      plan.receive_address = codec::amqp::c2d_to(s->device_id);
      plan.receive_target = s->device_id;
    }
    s->conn = std::make_unique<detail::connection>(std::move(options), std::move(plan));
    state_ = std::move(s);
  }

  /// A connection for `HostName=…;DeviceId=…;SharedAccessKey=…[;GatewayHostName=…]`,
  /// with `options` for the rest (their `credentials` are replaced). Errors: the
  /// string's, naming the problem (400004).
  static result<device_connection> from_connection_string(std::string_view cs,
                                                          connection_options options = {}) {
    auto parsed = auth::parse_connection_string(cs);
    if (!parsed)
      return parsed.error();
    if (!parsed->device_id)
      return make_error(errc::argument_invalid,
                        "not a device connection string: it has no DeviceId");
    options.credentials = std::move(*parsed);
    return device_connection(std::move(options));
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
  const connection_options& options() const noexcept { return state_->conn->options(); }
  /// SAS tokens the hub accepted on this connection object, renewals included.
  std::uint64_t tokens_accepted() const { return state_->conn->tokens_accepted(); }

  /// Connects over TLS, puts the device's SAS token on `$cbs`.
  result<void> open() {
    if (!state_->id_error)
      return state_->id_error.error();
    return state_->conn->open();
  }
  void close() { state_->conn->close(); }
  bool is_open() const { return state_->conn->is_open(); }

  /// The next message, locked for this device; nullopt if none within `timeout`.
  /// The first receive on a connection attaches the C2D link with `prefetch`
  /// credit; an unknown device's attach is refused (404001).
  result<std::optional<message>> receive(duration timeout, std::stop_token stop = {}) {
    const time_point deadline = saturating_add(system_clock{}.now(), timeout);
    for (;;) {
      auto in = state_->conn->receive(deadline, stop);
      if (!in)
        return in.error();
      if (!*in)
        return std::optional<message>{};
      auto m = decode(**in);
      if (m)
        return std::optional<message>(std::move(*m));
      // Not a C2D message we can read: give it back (abandon) and wait for the next.
      (void)state_->conn->settle(std::move((*in)->tag), detail::outcome::released, false);
    }
  }

  /// Completes: `accepted` (412002 if the lock was lost).
  result<void> complete(const lock_token& token) {
    return state_->conn->settle(tag(token), detail::outcome::accepted);
  }
  /// Rejects (dead-letters): `rejected`.
  result<void> reject(const lock_token& token) {
    return state_->conn->settle(tag(token), detail::outcome::rejected);
  }
  /// Abandons (back to the queue, delivery count + 1): `released`.
  result<void> abandon(const lock_token& token) {
    return state_->conn->settle(tag(token), detail::outcome::released);
  }

 private:
  struct state {
    std::string device_id;
    result<void> id_error;
    std::unique_ptr<detail::connection> conn;
  };

  static std::string tag(const lock_token& token) {
    const auto b = codec::amqp::delivery_tag_bytes(token);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }

  static result<message> decode(const detail::incoming& in) {
    proton::message pm;
    try {
      pm.decode(in.bytes);
    } catch (const proton::error& e) {
      return make_error(errc::malformed, std::string("C2D delivery: ") + e.what());
    }
    const proton::binary tag(in.tag.begin(), in.tag.end());
    auto m = codec::amqp::decode_c2d_delivery(pm, tag, std::span<const char>(in.bytes));
    if (m && in.tag.size() != 16)  // settled by tag: the lock token must be the tag
      return make_error(errc::malformed, "C2D delivery tag is not 16 bytes (SPEC 10.14.4)");
    return m;
  }

  std::unique_ptr<state> state_;
};

static_assert(device_transport<device_connection>);
static_assert(transport_traits<device_connection>::can_reject);
static_assert(transport_traits<device_connection>::can_abandon);

}  // namespace devicebound::amqp
