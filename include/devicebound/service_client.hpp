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

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "device_client.hpp"  // detail::connection_runner, connection_status
#include "errors.hpp"
#include "feedback.hpp"
#include "hub.hpp"
#include "message.hpp"
#include "retry.hpp"
#include "token_source.hpp"
#include "transport.hpp"

namespace devicebound {

/// When the client sets a message's `message_id` (SPEC 3.4: C#'s SdkAssignsMessageId).
enum class message_id_assignment : std::uint8_t {
  never,       ///< leave it to the caller (C#, Node and C default)
  when_unset,  ///< a UUID v4 when the caller set none (Python always does)
};

/// How the back end settles a feedback batch (SPEC 4.8; C# v2's AcknowledgementType).
enum class feedback_disposition : std::uint8_t { complete, abandon };

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
        options_(std::move(options)) {}

  service_client(const service_client&) = delete;
  service_client& operator=(const service_client&) = delete;

  ~service_client() {
    stop_pump();
    runner_.transport().close();
  }

  Transport& transport() noexcept { return runner_.transport(); }
  clock_type clock() const { return runner_.clock(); }
  connection_status status() const { return runner_.status(); }

  void set_connection_status_callback(connection_status_callback cb) {
    runner_.set_status_callback(std::move(cb));
  }
  void set_error_handler(client_error_handler h) {
    std::lock_guard<std::mutex> g(handler_mutex_);
    error_handler_ = std::move(h);
  }

  /// Opens the connection under the retry policy (operations also open on demand).
  result<void> open() {
    auto r = runner_.connect();
    if (r) {
      std::lock_guard<std::mutex> g(handler_mutex_);
      if (handler_ && pump_done_.load())
        start_pump_locked();
    }
    return r;
  }

  /// Stops the feedback thread and closes the connection.
  void close() {
    stop_pump();
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
  void set_feedback_handler(feedback_handler h) {
    stop_pump();
    std::lock_guard<std::mutex> g(handler_mutex_);
    handler_ = std::move(h);
    if (handler_)
      start_pump_locked();
  }

  /// The next feedback batch, locked, waiting up to `timeout`; nullopt if none.
  /// Refused (409002) while a feedback handler is set.
  result<std::optional<feedback_batch>> receive_feedback(duration timeout) {
    {
      std::lock_guard<std::mutex> g(handler_mutex_);
      if (handler_)
        return make_error(
            errc::invalid_operation,
            "a feedback handler is set: receive_feedback() and the handler are exclusive");
    }
    const auto& c = runner_.clock();
    const time_point deadline = saturating_add(c.now(), timeout);
    const auto stop = runner_.closing_token();
    return runner_.run(
        [&] {
          const time_point now = c.now();
          return runner_.transport().receive_feedback(
              deadline > now ? deadline - now : duration::zero(), stop);
        },
        stop, deadline);
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

  void report_error(const error& e) {
    client_error_handler h;
    {
      std::lock_guard<std::mutex> g(handler_mutex_);
      h = error_handler_;
    }
    if (h)
      h(e);
  }

  void start_pump_locked() {
    if (pump_.joinable())
      pump_.join();
    pump_done_.store(false);
    pump_ = std::jthread([this, h = handler_](std::stop_token stop) { pump(stop, h); });
  }

  void stop_pump() {
    std::jthread t;
    {
      std::lock_guard<std::mutex> g(handler_mutex_);
      t = std::move(pump_);
    }
    if (t.joinable()) {
      t.request_stop();
      t.join();
    }
  }

  void pump(const std::stop_token& stop, const feedback_handler& handler) {
    while (!stop.stop_requested()) {
      auto r = runner_.run(
          [&] {
            return runner_.transport().receive_feedback(options_.feedback_receive_timeout, stop);
          },
          stop);
      if (stop.stop_requested())
        break;
      if (!r) {
        report_error(r.error());
        break;
      }
      if (!*r)
        continue;
      const feedback_batch& b = **r;
      feedback_disposition d = feedback_disposition::abandon;
      try {
        d = handler(b);
      } catch (const std::exception& e) {
        report_error(make_error(errc::invalid_operation,
                                std::string("feedback handler threw: ") + e.what()));
      } catch (...) {
        report_error(make_error(errc::invalid_operation, "feedback handler threw"));
      }
      if (auto s = settle_with(b.lock_token, d, stop); !s)
        report_error(s.error());
    }
    pump_done_.store(true);
  }

  detail::connection_runner<Transport, Policy> runner_;
  service_client_options options_;

  std::mutex id_mutex_;
  std::mutex handler_mutex_;
  feedback_handler handler_;
  client_error_handler error_handler_;
  std::jthread pump_;
  std::atomic<bool> pump_done_{true};
};

}  // namespace devicebound
