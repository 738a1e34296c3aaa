/// \file transport/amqp/service.hpp
/// The back end's AMQP connection to IoT Hub or `devicebound-hub`: the sender
/// link `/messages/devicebound` (SPEC 10.8-10.10) and the feedback receiver
/// `/messages/serviceBound/feedback` (SPEC 10.11). IoT Hub has no AMQP surface
/// for purging a device queue or reading its depth (they are HTTPS calls,
/// SPEC 11), so this transport declares neither: `purge()` and
/// `queue_depth()` do not compile on a service client over AMQP.
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
#include <vector>

#include "../../auth/connection_string.hpp"
#include "../../clock.hpp"
#include "../../codec/amqp.hpp"
#include "../../device_id.hpp"
#include "../../errors.hpp"
#include "../../feedback_batch.hpp"
#include "../../message.hpp"
#include "../../settlement.hpp"
#include "../../transport.hpp"
#include "connection.hpp"
#include "options.hpp"

namespace devicebound::amqp {

/// The path of IoT Hub's C2D send link (SPEC 10.8.1).
inline constexpr std::string_view c2d_send_address = "/messages/devicebound";
/// The path of IoT Hub's feedback link (SPEC 10.11.1).
inline constexpr std::string_view feedback_address = "/messages/serviceBound/feedback";

/// The back end's AMQP connection. Closed until `open()`.
class service_connection {
 public:
  using clock_type = system_clock;
  using options_type = connection_options;
  // No can_purge, no can_query_queue_depth: IoT Hub offers them over HTTPS only.

  /// `options.credentials` must be a service connection string (a policy and
  /// its key, no DeviceId); otherwise `open()` fails with 400004.
  explicit service_connection(connection_options options) {
    auto s = std::make_unique<state>();
    const auto& cs = options.credentials;
    if (cs.device_id)
      s->config_error = make_error(errc::argument_invalid,
                                   "a service connection string names a policy, not a DeviceId");
    else if (!cs.shared_access_key_name && !cs.shared_access_signature)
      s->config_error = make_error(errc::argument_invalid,
                                   "a service connection string needs SharedAccessKeyName");
    detail::link_plan plan;
    plan.send_address = c2d_send_address;
    plan.receive_address = feedback_address;
    s->conn = std::make_unique<detail::connection>(std::move(options), std::move(plan));
    state_ = std::move(s);
  }

  /// A connection for `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`, with
  /// `options` for the rest (their `credentials` are replaced). Errors: the string's (400004).
  static result<service_connection> from_connection_string(std::string_view cs,
                                                           connection_options options = {}) {
    auto parsed = auth::parse_connection_string(cs);
    if (!parsed)
      return parsed.error();
    if (parsed->device_id)
      return make_error(errc::argument_invalid,
                        "not a service connection string: it names a DeviceId");
    options.credentials = std::move(*parsed);
    return service_connection(std::move(options));
  }

  service_connection(service_connection&&) noexcept = default;
  service_connection& operator=(service_connection&&) = delete;
  service_connection(const service_connection&) = delete;

  ~service_connection() {
    if (state_)
      close();
  }

  clock_type clock() const { return {}; }
  const connection_options& options() const noexcept { return state_->conn->options(); }
  /// SAS tokens the hub accepted on this connection object, renewals included.
  std::uint64_t tokens_accepted() const { return state_->conn->tokens_accepted(); }

  /// Connects over TLS, puts the policy's SAS token on `$cbs`, attaches the send link.
  result<void> open() {
    if (!state_->config_error)
      return state_->config_error.error();
    return state_->conn->open();
  }
  void close() { state_->conn->close(); }
  bool is_open() const { return state_->conn->is_open(); }

  /// Sends `msg` to `device_id` and waits for the hub's outcome: `accepted`, or
  /// `rejected` with its condition as a typed error (404001 unknown device,
  /// 403004 queue full, 413001 too large, ... SPEC 10.10.2). IoT Hub's
  /// `accepted` carries no sequence number: the receipt's is 0, and its expiry
  /// the message's own (unset if the hub applies its default TTL).
  result<enqueue_receipt> send(std::string_view device_id, const message& msg) {
    auto pm = codec::amqp::encode_c2d_send(device_id, msg);
    if (!pm)
      return pm.error();
    std::vector<char> bytes;
    try {
      pm->encode(bytes);
    } catch (const proton::error& e) {
      return make_error(errc::argument_invalid,
                        std::string("cannot encode the message: ") + e.what());
    }
    if (auto r = state_->conn->send(std::move(bytes)); !r)
      return r.error();
    enqueue_receipt out;
    if (msg.expiry_time_utc)
      out.expiry_time_utc = *msg.expiry_time_utc;
    return out;
  }

  /// The next feedback batch, locked. The first call on a connection attaches
  /// the feedback link with `prefetch` credit.
  result<std::optional<feedback_batch>> receive_feedback(duration timeout,
                                                         std::stop_token stop = {}) {
    const time_point deadline = saturating_add(system_clock{}.now(), timeout);
    for (;;) {
      auto in = state_->conn->receive(deadline, stop);
      if (!in)
        return in.error();
      if (!*in)
        return std::optional<feedback_batch>{};
      auto b = decode(**in);
      if (b)
        return std::optional<feedback_batch>(std::move(*b));
      (void)state_->conn->settle(std::move((*in)->tag), detail::outcome::released, false);
    }
  }

  /// Completes a batch: `accepted`.
  result<void> complete_feedback(const lock_token& token) {
    return state_->conn->settle(tag(token), detail::outcome::accepted);
  }
  /// Abandons a batch (delivered again): `released`.
  result<void> abandon_feedback(const lock_token& token) {
    return state_->conn->settle(tag(token), detail::outcome::released);
  }

 private:
  struct state {
    result<void> config_error;
    std::unique_ptr<detail::connection> conn;
  };

  static std::string tag(const lock_token& token) {
    const auto b = codec::amqp::delivery_tag_bytes(token);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }

  static result<feedback_batch> decode(const detail::incoming& in) {
    proton::message pm;
    try {
      pm.decode(in.bytes);
    } catch (const proton::error& e) {
      return make_error(errc::malformed, std::string("feedback message: ") + e.what());
    }
    const proton::binary tag(in.tag.begin(), in.tag.end());
    return codec::amqp::decode_feedback(pm, tag, std::span<const char>(in.bytes));
  }

  std::unique_ptr<state> state_;
};

static_assert(service_transport<service_connection>);
static_assert(!transport_traits<service_connection>::can_purge);
static_assert(!transport_traits<service_connection>::can_query_queue_depth);

}  // namespace devicebound::amqp
