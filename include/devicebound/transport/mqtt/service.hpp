/// \file transport/mqtt/service.hpp
/// The back end's MQTT connection to `devicebound-hub`: send, purge, queue
/// depth and delivery feedback over the extension topics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../clock.hpp"
#include "../../codec/iso8601.hpp"
#include "../../codec/protocol.hpp"
#include "../../device_id.hpp"
#include "../../errors.hpp"
#include "../../feedback_batch.hpp"
#include "../../message.hpp"
#include "../../settlement.hpp"
#include "../../transport.hpp"
#include "endpoint.hpp"
#include "options.hpp"

namespace devicebound::mqtt {

/// The back end's MQTT connection to `devicebound-hub`. Closed until `open()`.
class service_connection {
 public:
  using clock_type = system_clock;
  static constexpr bool can_purge = true;
  static constexpr bool can_query_queue_depth = true;

  explicit service_connection(connection_options options = {}) {
    auto s = std::make_unique<state>();
    if (options.client_id.empty())
      options.client_id = "devicebound-service-" + detail::random_hex(8);
    s->id = options.client_id;
    s->id_error = validate_device_id(s->id);
    const bool clean = options.clean_session.value_or(true);
    const std::string id = s->id;
    auto will = [id](std::string_view conn) {
      return protocol::detach_topic(protocol::party::service, id, conn);
    };
    s->endpoint = std::make_unique<detail::endpoint>(
        std::move(options), id, protocol::party::service, clean,
        std::vector<std::string>{protocol::client_filter(protocol::party::service, id)},
        std::move(will), true);
    state_ = std::move(s);
  }

  service_connection(service_connection&&) noexcept = default;
  service_connection& operator=(service_connection&&) = delete;
  service_connection(const service_connection&) = delete;

  ~service_connection() {
    if (state_)
      close();
  }

  /// The MQTT client id, which names this back end in the extension topics.
  std::string_view client_id() const noexcept { return state_->id; }
  clock_type clock() const { return {}; }
  const connection_options& options() const noexcept { return state_->endpoint->options(); }
  int nodelay_sockets() const noexcept { return state_->endpoint->nodelay_sockets(); }

  result<void> open() {
    if (!state_->id_error)
      return make_error(errc::argument_invalid,
                        "service client id: " + state_->id_error.error().message);
    return state_->endpoint->open();
  }

  void close() { state_->endpoint->close(true); }
  bool is_open() const { return state_->endpoint->is_open(); }

  /// Enqueues a copy of `msg` for `device_id` (SPEC 7.2).
  result<enqueue_receipt> send(std::string_view device_id, const message& msg) {
    if (auto v = validate_device_id(device_id); !v)
      return v.error();
    auto& ep = *state_->endpoint;
    auto r = ep.request(protocol::send_request(state_->id, device_id, msg), msg.body,
                        ep.options().request_timeout);
    if (!r)
      return r.error();
    enqueue_receipt out;
    const std::string* seq = protocol::find(*r, protocol::key_sequence_number);
    const std::string* exp = protocol::find(*r, protocol::key_expiry);
    const auto s = seq ? protocol::parse_unsigned<std::uint64_t>(*seq) : std::nullopt;
    if (!s)
      return make_error(errc::malformed, "the hub's answer to a send has no $.seq");
    out.sequence_number = *s;
    if (exp) {
      auto t = codec::parse_iso8601(*exp);
      if (!t)
        return t.error();
      out.expiry_time_utc = *t;
    }
    return out;
  }

  /// Removes every pending message of a device; returns how many (SPEC 5.19).
  result<std::size_t> purge(std::string_view device_id) {
    return count_request(protocol::op_purge, device_id, protocol::key_count);
  }

  /// Pending messages of a device, Enqueued plus Invisible (SPEC 2.10).
  result<std::size_t> queue_depth(std::string_view device_id) {
    return count_request(protocol::op_depth, device_id, protocol::key_depth);
  }

  /// The next feedback batch, locked. The first call on a connection attaches
  /// (the hub then pushes up to `prefetch` batches before one is settled).
  result<std::optional<feedback_batch>> receive_feedback(duration timeout,
                                                         std::stop_token stop = {}) {
    auto& ep = *state_->endpoint;
    const time_point deadline = devicebound::saturating_add(system_clock{}.now(), timeout);
    const std::string head =
        protocol::push_head(protocol::party::service, state_->id, protocol::push_feedback);
    for (;;) {
      auto p = ep.next_attached_push(protocol::party::service, state_->id, deadline, stop);
      if (!p)
        return p.error();
      if (!*p)
        return std::optional<feedback_batch>{};
      if (!(*p)->topic.starts_with(head))
        continue;
      std::string conn;
      auto b = protocol::decode_feedback(std::string_view((*p)->topic).substr(head.size()),
                                         (*p)->payload, &conn);
      if (b && conn == ep.connection_id())  // else: for an earlier connection, comes again
        return std::optional<feedback_batch>(std::move(*b));
    }
  }

  result<void> complete_feedback(const lock_token& token) {
    return settle_feedback(protocol::op_feedback_complete, token);
  }
  result<void> abandon_feedback(const lock_token& token) {
    return settle_feedback(protocol::op_feedback_abandon, token);
  }

 private:
  struct state {
    std::string id;
    result<void> id_error;
    std::unique_ptr<detail::endpoint> endpoint;
  };

  result<std::size_t> count_request(std::string_view op, std::string_view device_id,
                                    std::string_view key) {
    if (auto v = validate_device_id(device_id); !v)
      return v.error();
    auto& ep = *state_->endpoint;
    auto r = ep.request(protocol::bag_writer(protocol::request_head(protocol::party::service,
                                                                    state_->id, op, device_id)),
                        {}, ep.options().request_timeout);
    if (!r)
      return r.error();
    const std::string* v = protocol::find(*r, key);
    const auto n = v ? protocol::parse_unsigned<std::size_t>(*v) : std::nullopt;
    if (!n)
      return make_error(errc::malformed, "the hub's answer has no " + std::string(key));
    return *n;
  }

  result<void> settle_feedback(std::string_view op, const lock_token& token) {
    auto& ep = *state_->endpoint;
    auto r = ep.request(protocol::settle_request(protocol::party::service, state_->id, op, token),
                        {}, ep.options().request_timeout);
    if (!r)
      return r.error();
    return {};
  }

  std::unique_ptr<state> state_;
};

static_assert(service_transport<service_connection>);
static_assert(transport_traits<service_connection>::can_purge);

}  // namespace devicebound::mqtt
