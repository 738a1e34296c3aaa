/// \file transport.hpp
/// What a transport is: the C++20 concepts `device_transport` and
/// `service_transport`, and `transport_traits`, the capabilities a transport
/// declares at compile time (DESIGN principles 3 and 4).
///
/// A transport is one connection to a hub, seen from a device or from the back
/// end. The in-process transport (`transport/inproc.hpp`) and the MQTT transport
/// satisfy the same concepts; what differs is declared in the traits, so that a
/// client refuses at compile time what the protocol cannot do (SPEC 1.6).
///
/// Every transport operation must be safe to call from several threads at once
/// (a client receives on one thread while the application settles on another).
#pragma once

#include <concepts>
#include <cstddef>
#include <optional>
#include <stop_token>
#include <string_view>

#include "clock.hpp"
#include "errors.hpp"
#include "feedback_batch.hpp"
#include "message.hpp"
#include "settlement.hpp"

namespace devicebound {

namespace detail {
template <class T>
constexpr bool flag_can_reject() {
  if constexpr (requires { T::can_reject; })
    return static_cast<bool>(T::can_reject);
  else
    return false;
}
template <class T>
constexpr bool flag_can_abandon() {
  if constexpr (requires { T::can_abandon; })
    return static_cast<bool>(T::can_abandon);
  else
    return false;
}
template <class T>
constexpr bool flag_settles_in_order() {
  if constexpr (requires { T::settles_in_order; })
    return static_cast<bool>(T::settles_in_order);
  else
    return false;
}
template <class T>
constexpr bool flag_can_purge() {
  if constexpr (requires { T::can_purge; })
    return static_cast<bool>(T::can_purge);
  else
    return false;
}
template <class T>
constexpr bool flag_can_query_queue_depth() {
  if constexpr (requires { T::can_query_queue_depth; })
    return static_cast<bool>(T::can_query_queue_depth);
  else
    return false;
}
}  // namespace detail

/// What a transport can do, read from its `static constexpr bool` members. A
/// member the transport does not declare counts as `false`: a transport that says
/// nothing can only complete, like MQTT to IoT Hub.
template <class T>
struct transport_traits {
  /// Device side: `reject(lock_token)` dead-letters a message (AMQP, HTTPS; not MQTT, SPEC 1.6).
  static constexpr bool can_reject = detail::flag_can_reject<T>();
  /// Device side: `abandon(lock_token)` re-enqueues a message (AMQP, HTTPS; not MQTT, SPEC 1.6).
  static constexpr bool can_abandon = detail::flag_can_abandon<T>();
  /// Device side: completions must follow delivery order (MQTT PUBACK, SPEC 1.8).
  static constexpr bool settles_in_order = detail::flag_settles_in_order<T>();
  /// Service side: `purge(device_id)` empties a device queue (SPEC 5.19).
  static constexpr bool can_purge = detail::flag_can_purge<T>();
  /// Service side: `queue_depth(device_id)` reads cloudToDeviceMessageCount (SPEC 2.10).
  static constexpr bool can_query_queue_depth = detail::flag_can_query_queue_depth<T>();
};

/// What every transport has: a clock, and a connection that opens and closes.
///
/// - `clock()` returns the clock the transport waits on (`clock_type`); clients
///   wait on the same clock, so a test's `manual_clock` drives both.
/// - `open()` connects (errors: `not_connected`, `unauthorized`, `timeout`, ...);
///   opening an open connection succeeds and does nothing.
/// - `close()` disconnects; operations blocked on the connection return `not_connected`.
/// - `is_open()` is false before `open()`, after `close()` and after a connection loss.
template <class T>
concept transport_connection = std::move_constructible<T> && requires(T& t, const T& ct) {
  typename T::clock_type;
  requires clock<typename T::clock_type>;
  { ct.clock() } -> std::convertible_to<typename T::clock_type>;
  { t.open() } -> std::same_as<result<void>>;
  { t.close() } -> std::same_as<void>;
  { ct.is_open() } -> std::convertible_to<bool>;
};

/// A device's connection to its hub (SPEC 1.6, 6).
///
/// - `device_id()`: the device this connection is for.
/// - `receive(timeout, stop)`: the next C2D message, locked for this device
///   (`lock_token` set, `delivery_count` and `sequence_number` filled in); nullopt
///   if none arrived within `timeout` (0: do not wait) or `stop` was requested.
/// - `complete(token)`: settles a locked message as Completed.
/// - `reject(token)` / `abandon(token)`: only when the traits say so.
///
/// A settlement with an unknown or expired token returns 412002
/// `device_message_lock_lost` (SPEC 1.5).
template <class T>
concept device_transport = transport_connection<T> &&
    requires(T& t, const T& ct, duration timeout, std::stop_token stop, const lock_token& token) {
  { ct.device_id() } -> std::convertible_to<std::string_view>;
  { t.receive(timeout, stop) } -> std::same_as<result<std::optional<message>>>;
  { t.complete(token) } -> std::same_as<result<void>>;
} &&(!transport_traits<T>::can_reject ||
     requires(T & t, const lock_token& token) {
       { t.reject(token) } -> std::same_as<result<void>>;
     }) &&
    (!transport_traits<T>::can_abandon || requires(T & t, const lock_token& token) {
      { t.abandon(token) } -> std::same_as<result<void>>;
    });

/// The back end's connection to the hub (SPEC 4, 5.19, 6).
///
/// - `send(device_id, msg)`: enqueues a copy of `msg`; errors are the hub's
///   (404001, 403004, 413001, 400004) plus transport ones (429001, not_connected...).
/// - `receive_feedback(timeout, stop)`: the next feedback batch, locked
///   (`lock_token` set); nullopt if none within `timeout` or `stop` was requested.
/// - `complete_feedback(token)` / `abandon_feedback(token)`: settle a batch (SPEC 4.8).
/// - `purge(device_id)` and `queue_depth(device_id)`: only when the traits say so.
template <class T>
concept service_transport = transport_connection<T> &&
    requires(T& t, std::string_view device_id, const message& msg, duration timeout,
             std::stop_token stop, const lock_token& token) {
  { t.send(device_id, msg) } -> std::same_as<result<enqueue_receipt>>;
  { t.receive_feedback(timeout, stop) } -> std::same_as<result<std::optional<feedback_batch>>>;
  { t.complete_feedback(token) } -> std::same_as<result<void>>;
  { t.abandon_feedback(token) } -> std::same_as<result<void>>;
} &&(!transport_traits<T>::can_purge ||
     requires(T & t, std::string_view device_id) {
       { t.purge(device_id) } -> std::same_as<result<std::size_t>>;
     }) &&
    (!transport_traits<T>::can_query_queue_depth || requires(T & t, std::string_view device_id) {
      { t.queue_depth(device_id) } -> std::same_as<result<std::size_t>>;
    });

}  // namespace devicebound
