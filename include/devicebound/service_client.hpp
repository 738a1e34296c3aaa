/// \file service_client.hpp
/// The back-end side of C2D (SPEC 4, 5.19, 6): send to a device with an ack
/// mode, purge a device queue, read its depth, and receive delivery feedback
/// (by callback or by pulling) and complete or abandon each batch. Templated
/// over a `service_transport` and a retry policy; the retry model is the device
/// client's (see device_client.hpp): an attempt opens the connection if needed,
/// and only errors the policy's classifier calls transient are retried (429001
/// throttling, not_connected, timeouts, 5xx). 404001, 403004, 413001 and 400004
/// are returned at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

#include "clock.hpp"
#include "connection_status.hpp"
#include "detail/connection_runner.hpp"
#include "detail/handler_pump.hpp"
#include "errors.hpp"
#include "feedback_batch.hpp"
#include "message.hpp"
#include "retry.hpp"
#include "settlement.hpp"
#include "token_source.hpp"
#include "transport.hpp"

namespace devicebound {

/// When the client sets a message's `message_id` (SPEC 3.4: C#'s SdkAssignsMessageId).
enum class message_id_assignment : std::uint8_t {
  never,       ///< leave it to the caller (C#, Node and C default)
  when_unset,  ///< a UUID v4 when the caller set none (Python always does)
};

/// `never` or `when_unset`.
constexpr std::string_view to_string(message_id_assignment a) noexcept {
  return a == message_id_assignment::when_unset ? "when_unset" : "never";
}

/// Parses `never` or `when_unset` (exact spelling); nullopt otherwise.
constexpr std::optional<message_id_assignment> parse_message_id_assignment(
    std::string_view s) noexcept {
  for (auto v : {message_id_assignment::never, message_id_assignment::when_unset})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// How the back end settles a feedback batch (SPEC 4.8; C# v2's AcknowledgementType).
enum class feedback_disposition : std::uint8_t { complete, abandon };

/// `complete` or `abandon`.
constexpr std::string_view to_string(feedback_disposition d) noexcept {
  return d == feedback_disposition::abandon ? "abandon" : "complete";
}

/// Parses `complete` or `abandon` (exact spelling); nullopt otherwise.
constexpr std::optional<feedback_disposition> parse_feedback_disposition(
    std::string_view s) noexcept {
  for (auto v : {feedback_disposition::complete, feedback_disposition::abandon})
    if (s == to_string(v))
      return v;
  return std::nullopt;
}

/// A random UUID (version 4, RFC 4122 variant) from 16 bytes of `random`,
/// lowercase with hyphens: `xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`.
inline std::string make_uuid_v4(const token_source& random) {
  lock_token t = random();
  t.bytes[6] = static_cast<std::uint8_t>((t.bytes[6] & 0x0F) | 0x40);
  t.bytes[8] = static_cast<std::uint8_t>((t.bytes[8] & 0x3F) | 0x80);
  return t.to_string();
}

/// Options of a `service_client`.
struct service_client_options {
  message_id_assignment assign_message_id = message_id_assignment::never;
  /// Random bytes for assigned message ids (unguessable system randomness by default;
  /// `seeded_token_source` makes them reproducible in tests).
  token_source message_id_source = system_token_source();
  /// How long the feedback thread's receive waits before it asks again (interrupted on stop).
  duration feedback_receive_timeout = std::chrono::minutes(1);
  /// Seed of the retry jitter; unset: from `std::random_device`.
  std::optional<std::uint64_t> random_seed;
};

/// The back end's C2D client over `Transport` (SPEC 6). Thread-safe; not movable.
template <service_transport Transport, class Policy = retry::policy>
class service_client {
  using traits = transport_traits<Transport>;

 public:
  using transport_type = Transport;
  using policy_type = Policy;
  using clock_type = typename Transport::clock_type;
  /// Returns whether to complete the batch (it leaves the feedback queue) or
  /// abandon it (it is delivered again, up to the feedback max delivery count).
  using feedback_handler = std::function<feedback_disposition(const feedback_batch&)>;

  explicit service_client(Transport transport, Policy policy = Policy{},
                          service_client_options options = {})
      : runner_(std::move(transport), std::move(policy), options.random_seed),
        options_(std::move(options)),
        pump_(
            "feedback handler",
            [this](const std::stop_token& stop) {
              return runner_.run(
                  [&] {
                    return runner_.transport().receive_feedback(options_.feedback_receive_timeout,
                                                                stop);
                  },
                  stop);
            },
            // A throwing handler leaves the batch to be delivered again.
            [this](const feedback_batch& b, std::optional<feedback_disposition> d,
                   const std::stop_token& stop) {
              return settle_with(b.lock_token, d.value_or(feedback_disposition::abandon), stop);
            }) {}

  service_client(const service_client&) = delete;
  service_client& operator=(const service_client&) = delete;

  ~service_client() {
    pump_.stop();
    runner_.transport().close();
  }

  Transport& transport() noexcept { return runner_.transport(); }
  clock_type clock() const { return runner_.clock(); }
  connection_status status() const { return runner_.status(); }

  void set_connection_status_callback(connection_status_callback cb) {
    runner_.set_status_callback(std::move(cb));
  }
  void set_error_handler(client_error_handler h) { pump_.set_error_handler(std::move(h)); }

  /// Opens the connection under the retry policy (operations also open on demand).
  result<void> open() {
    auto r = runner_.connect();
    if (r)
      pump_.resume();
    return r;
  }

  /// Stops the feedback thread and closes the connection.
  void close() {
    pump_.stop();
    runner_.disconnect();
  }

  /// Sends `msg` to `device_id` (SPEC 7.2). A message id is assigned first when
  /// the options say so, so that every retry of this send carries the same id.
  /// A retried send whose first answer was lost can enqueue twice (at-least-once).
  result<enqueue_receipt> send(std::string_view device_id, message msg) {
    if (options_.assign_message_id == message_id_assignment::when_unset && !msg.message_id)
      msg.message_id = next_message_id();
    const auto stop = runner_.closing_token();
    return runner_.run([&] { return runner_.transport().send(device_id, msg); }, stop);
  }

  /// Sends with the ack mode `ack` (`iothub-ack`, SPEC 4.1).
  result<enqueue_receipt> send(std::string_view device_id, message msg, ack_mode ack) {
    msg.ack = ack;
    return send(device_id, std::move(msg));
  }

  /// Removes every pending message of `device_id`; returns how many (SPEC 5.19).
  result<std::size_t> purge(std::string_view device_id) {
    static_assert(traits::can_purge, "the transport cannot purge a device queue");
    const auto stop = runner_.closing_token();
    return runner_.run([&] { return runner_.transport().purge(device_id); }, stop);
  }

  /// Messages pending for `device_id`, Enqueued plus Invisible (SPEC 2.10).
  result<std::size_t> queue_depth(std::string_view device_id) {
    static_assert(traits::can_query_queue_depth, "the transport cannot read a queue depth");
    const auto stop = runner_.closing_token();
    return runner_.run([&] { return runner_.transport().queue_depth(device_id); }, stop);
  }

  /// Sets the feedback handler and starts the client's thread that receives
  /// batches, calls it and settles them; `nullptr` stops that thread.
  void set_feedback_handler(feedback_handler h) { pump_.set_handler(std::move(h)); }

  /// The next feedback batch, locked, waiting up to `timeout`; nullopt if none.
  /// Refused (409002) while a feedback handler is set.
  result<std::optional<feedback_batch>> receive_feedback(duration timeout) {
    if (pump_.has_handler())
      return make_error(
          errc::invalid_operation,
          "a feedback handler is set: receive_feedback() and the handler are exclusive");
    return runner_.run_for(timeout, [&](duration left, const std::stop_token& stop) {
      return runner_.transport().receive_feedback(left, stop);
    });
  }

  /// Completes a received batch: it leaves the feedback queue (SPEC 4.8).
  result<void> complete_feedback(const feedback_batch& b) {
    return settle_with(b.lock_token, feedback_disposition::complete, runner_.closing_token());
  }
  /// Abandons a received batch: it is delivered again (SPEC 4.8).
  result<void> abandon_feedback(const feedback_batch& b) {
    return settle_with(b.lock_token, feedback_disposition::abandon, runner_.closing_token());
  }

 private:
  std::string next_message_id() {
    std::lock_guard<std::mutex> g(id_mutex_);
    return make_uuid_v4(options_.message_id_source);
  }

  result<void> settle_with(const lock_token& token, feedback_disposition d,
                           const std::stop_token& stop) {
    return runner_.run(
        [&] {
          return d == feedback_disposition::complete ? runner_.transport().complete_feedback(token)
                                                     : runner_.transport().abandon_feedback(token);
        },
        stop);
  }

  detail::connection_runner<Transport, Policy> runner_;
  service_client_options options_;

  std::mutex id_mutex_;
  detail::handler_pump<feedback_batch, feedback_disposition> pump_;
};

}  // namespace devicebound
