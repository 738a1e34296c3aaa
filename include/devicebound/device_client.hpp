/// \file device_client.hpp
/// The device side of C2D (SPEC 1.6, 6): connect under a retry policy with a
/// connection-status callback, receive with a handler or by pulling, and
/// complete, reject or abandon. Templated over a `device_transport` and a retry
/// policy (`retry::policy` by default; `retry::profiles` has the SDKs' ones).
///
/// Retry model (as the C# and Node SDKs): every operation is attempted as
/// "open the connection if it is not open, then do it", and an attempt that fails
/// with an error the policy classifies as transient is attempted again when the
/// policy's `retry::controller` says so. So a lost connection is re-established
/// by whichever operation needs it next: the handler thread's receive, or the
/// application's own call. 412002 (lock lost) is never retried: the message will
/// be redelivered (SPEC 8.8).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
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
#include "message.hpp"
#include "retry.hpp"
#include "settlement.hpp"
#include "transport.hpp"

namespace devicebound {

/// Options of a `device_client`.
struct device_client_options {
  /// How long the handler thread's receive waits before it asks again. It is
  /// interrupted at once on stop, so this only bounds how stale a wait can get.
  duration receive_timeout = std::chrono::minutes(1);
  /// Seed of the retry jitter; unset: from `std::random_device`.
  std::optional<std::uint64_t> random_seed;
};

/// A device's C2D client over `Transport` (SPEC 6). Thread-safe; not movable.
///
/// Two ways to receive, mutually exclusive (as in the Python SDK):
/// - a handler (`set_message_handler`) called on the client's own thread; its
///   return value settles the message;
/// - pulling with `receive(timeout)` and settling with complete/reject/abandon.
///
/// `reject` and `abandon` do not compile when the transport cannot do them.
template <device_transport Transport, class Policy = retry::policy>
class device_client {
  using traits = transport_traits<Transport>;

 public:
  using transport_type = Transport;
  using policy_type = Policy;
  using clock_type = typename Transport::clock_type;
  /// Returns how to settle the message. Over a complete-only transport, `reject`
  /// and `abandon` leave the message locked (it is redelivered after the lock
  /// expires, like the C SDK's ABANDONED over MQTT) and report 405001.
  using message_handler = std::function<disposition(const message&)>;

  explicit device_client(Transport transport, Policy policy = Policy{},
                         device_client_options options = {})
      : runner_(std::move(transport), std::move(policy), options.random_seed),
        options_(options),
        pump_(
            "message handler",
            [this](const std::stop_token& stop) {
              return runner_.run(
                  [&] { return runner_.transport().receive(options_.receive_timeout, stop); },
                  stop);
            },
            [this](const message& m, std::optional<disposition> d, const std::stop_token& stop) {
              return settle_handled(m, d, stop);
            }) {}

  device_client(const device_client&) = delete;
  device_client& operator=(const device_client&) = delete;

  /// A client over a transport built from an IoT Hub device connection string
  /// (`HostName=…;DeviceId=…;SharedAccessKey=…`), for transports that offer
  /// `Transport::from_connection_string` (AMQP). Errors: the string's (400004).
  template <class T = Transport>
  requires requires(std::string_view cs, typename T::options_type o) {
    { T::from_connection_string(cs, std::move(o)) } -> std::same_as<result<T>>;
  }
  static result<std::unique_ptr<device_client>> from_connection_string(
      std::string_view connection_string, typename T::options_type transport_options = {},
      Policy policy = Policy{}, device_client_options options = {}) {
    auto t = T::from_connection_string(connection_string, std::move(transport_options));
    if (!t)
      return t.error();
    return std::make_unique<device_client>(std::move(*t), std::move(policy), options);
  }

  /// Stops the handler thread and closes the connection.
  ~device_client() {
    pump_.stop();
    runner_.transport().close();
  }

  std::string_view device_id() const { return runner_.transport().device_id(); }
  Transport& transport() noexcept { return runner_.transport(); }
  clock_type clock() const { return runner_.clock(); }
  connection_status status() const { return runner_.status(); }

  void set_connection_status_callback(connection_status_callback cb) {
    runner_.set_status_callback(std::move(cb));
  }
  void set_error_handler(client_error_handler h) { pump_.set_error_handler(std::move(h)); }

  /// Opens the connection under the retry policy (attempt, wait as the policy
  /// decides, give up on a fatal error or when the policy is exhausted). Operations
  /// also connect on demand; connect() is needed again only after disconnect().
  /// Restarts the handler thread if a handler is set and it had stopped.
  result<void> connect() {
    auto r = runner_.connect();
    if (r)
      pump_.resume();
    return r;
  }

  /// Stops the handler thread, closes the connection, reports
  /// (disconnected, client_closed). Do not call it from a handler or callback.
  void disconnect() {
    pump_.stop();
    runner_.disconnect();
  }

  /// Sets the handler and starts the client's thread that receives, calls it and
  /// settles; `nullptr` stops that thread. Do not call it from the handler.
  void set_message_handler(message_handler h) { pump_.set_handler(std::move(h)); }

  /// The next message, locked for this device, waiting up to `timeout`; nullopt if
  /// none came. Reconnects under the policy within `timeout`. Refused (409002)
  /// while a handler is set.
  result<std::optional<message>> receive(duration timeout) {
    if (pump_.has_handler())
      return make_error(errc::invalid_operation,
                        "a message handler is set: receive() and the handler are exclusive");
    return runner_.run_for(timeout, [&](duration left, const std::stop_token& stop) {
      return runner_.transport().receive(left, stop);
    });
  }

  /// Completes a received message (SPEC 1.4). 412002 if its lock expired.
  result<void> complete(const message& m) { return settle(m, disposition::complete); }
  result<void> complete(const lock_token& token) { return settle(token, disposition::complete); }

  /// Rejects (dead-letters) a received message (SPEC 1.4).
  result<void> reject(const message& m) {
    static_assert(traits::can_reject,
                  "the transport cannot reject: MQTT to IoT Hub has no reject (SPEC 1.6)");
    return settle(m, disposition::reject);
  }
  result<void> reject(const lock_token& token) {
    static_assert(traits::can_reject,
                  "the transport cannot reject: MQTT to IoT Hub has no reject (SPEC 1.6)");
    return settle(token, disposition::reject);
  }

  /// Abandons a received message: back to the queue, delivery count + 1 (SPEC 1.4).
  result<void> abandon(const message& m) {
    static_assert(traits::can_abandon,
                  "the transport cannot abandon: MQTT to IoT Hub has no abandon (SPEC 1.6)");
    return settle(m, disposition::abandon);
  }
  result<void> abandon(const lock_token& token) {
    static_assert(traits::can_abandon,
                  "the transport cannot abandon: MQTT to IoT Hub has no abandon (SPEC 1.6)");
    return settle(token, disposition::abandon);
  }

  /// Settles with a disposition chosen at run time; over a transport that cannot
  /// do `d` it returns 405001 `not_supported` and the message stays locked.
  result<void> settle(const message& m, disposition d) {
    if (!m.lock_token)
      return make_error(errc::argument_invalid,
                        "the message has no lock token: it was not received");
    return settle(*m.lock_token, d);
  }
  result<void> settle(const lock_token& token, disposition d) {
    return settle_with(token, d, runner_.closing_token());
  }

 private:
  static constexpr bool supports(disposition d) noexcept {
    return d == disposition::complete || (d == disposition::reject && traits::can_reject) ||
           (d == disposition::abandon && traits::can_abandon);
  }

  static error unsupported(disposition d) {
    return make_error(errc::not_supported, "the transport cannot " + std::string(to_string(d)) +
                                               ": MQTT to IoT Hub can only complete (SPEC 1.6)");
  }

  result<void> settle_with(const lock_token& token, disposition d, const std::stop_token& stop) {
    if (!supports(d))
      return unsupported(d);
    return runner_.run(
        [&]() -> result<void> {
          auto& t = runner_.transport();
          switch (d) {
            case disposition::complete:
              return t.complete(token);
            case disposition::reject:
              if constexpr (traits::can_reject)
                return t.reject(token);
              break;
            case disposition::abandon:
              if constexpr (traits::can_abandon)
                return t.abandon(token);
              break;
          }
          return unsupported(d);
        },
        stop);
  }

  /// What the handler thread does with a handled message: settles it as the
  /// handler said; after a throw, abandons it (it is redelivered) where the
  /// transport can, else leaves it locked until its lock expires.
  result<void> settle_handled(const message& m, std::optional<disposition> d,
                              const std::stop_token& stop) {
    if (!d) {
      if constexpr (!traits::can_abandon)
        return {};
      d = disposition::abandon;
    }
    return settle_with(*m.lock_token, *d, stop);
  }

  detail::connection_runner<Transport, Policy> runner_;
  device_client_options options_;
  detail::handler_pump<message, disposition> pump_;
};

}  // namespace devicebound
