/// \file client_api.hpp
/// The C++ clients behind one runtime interface each, so that one JS class
/// serves every transport: `device_client<T>` for the in-process (full or
/// complete-only) and MQTT (extended or IoT Hub) device connections,
/// `service_client<T>` for the in-process and MQTT service connections.
#pragma once

#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace devicebound::node {

class device_api {
 public:
  virtual ~device_api() = default;
  virtual std::string device_id() const = 0;
  virtual bool can_reject() const = 0;
  virtual bool can_abandon() const = 0;
  virtual connection_status status() const = 0;
  virtual void set_status_callback(connection_status_callback cb) = 0;
  virtual result<void> connect() = 0;
  virtual void disconnect() = 0;
  virtual result<std::optional<message>> receive(duration timeout) = 0;
  /// 405001 where the transport cannot settle with `d` (MQTT to IoT Hub).
  virtual result<void> settle(const lock_token& token, disposition d) = 0;
};

/// `device_client<Transport>` as a `device_api`. `Keep` is what the transport
/// needs alive (the in-process hub); it is destroyed after the client.
template <class Transport>
class device_impl final : public device_api {
 public:
  device_impl(std::shared_ptr<void> keep, Transport t, retry::policy p, device_client_options o)
      : keep_(std::move(keep)), client_(std::move(t), std::move(p), o) {}

  std::string device_id() const override { return std::string(client_.device_id()); }
  bool can_reject() const override { return transport_traits<Transport>::can_reject; }
  bool can_abandon() const override { return transport_traits<Transport>::can_abandon; }
  connection_status status() const override { return client_.status(); }
  void set_status_callback(connection_status_callback cb) override {
    client_.set_connection_status_callback(std::move(cb));
  }
  result<void> connect() override { return client_.connect(); }
  void disconnect() override { client_.disconnect(); }
  result<std::optional<message>> receive(duration timeout) override {
    return client_.receive(timeout);
  }
  result<void> settle(const lock_token& token, disposition d) override {
    return client_.settle(token, d);
  }

 private:
  std::shared_ptr<void> keep_;
  device_client<Transport> client_;
};

class service_api {
 public:
  virtual ~service_api() = default;
  virtual connection_status status() const = 0;
  virtual void set_status_callback(connection_status_callback cb) = 0;
  virtual result<void> open() = 0;
  virtual void close() = 0;
  virtual result<enqueue_receipt> send(std::string_view device_id, message m) = 0;
  virtual result<std::size_t> purge(std::string_view device_id) = 0;
  virtual result<std::size_t> queue_depth(std::string_view device_id) = 0;
  virtual result<std::optional<feedback_batch>> receive_feedback(duration timeout) = 0;
  virtual result<void> settle_feedback(const lock_token& token, feedback_disposition d) = 0;
};

template <class Transport>
class service_impl final : public service_api {
 public:
  service_impl(std::shared_ptr<void> keep, Transport t, retry::policy p, service_client_options o)
      : keep_(std::move(keep)), client_(std::move(t), std::move(p), std::move(o)) {}

  connection_status status() const override { return client_.status(); }
  void set_status_callback(connection_status_callback cb) override {
    client_.set_connection_status_callback(std::move(cb));
  }
  result<void> open() override { return client_.open(); }
  void close() override { client_.close(); }
  result<enqueue_receipt> send(std::string_view device_id, message m) override {
    return client_.send(device_id, std::move(m));
  }
  result<std::size_t> purge(std::string_view device_id) override {
    return client_.purge(device_id);
  }
  result<std::size_t> queue_depth(std::string_view device_id) override {
    return client_.queue_depth(device_id);
  }
  result<std::optional<feedback_batch>> receive_feedback(duration timeout) override {
    return client_.receive_feedback(timeout);
  }
  result<void> settle_feedback(const lock_token& token, feedback_disposition d) override {
    feedback_batch b;
    b.lock_token = token;
    return d == feedback_disposition::complete ? client_.complete_feedback(b)
                                               : client_.abandon_feedback(b);
  }

 private:
  std::shared_ptr<void> keep_;
  service_client<Transport> client_;
};

}  // namespace devicebound::node
