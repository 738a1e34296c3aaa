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

/// What both clients' interfaces have: the connection and its status.
class connection_api {
 public:
  virtual ~connection_api() = default;
  virtual connection_status status() const = 0;
  virtual void set_status_callback(connection_status_callback cb) = 0;
  /// Connects the device client / opens the service client, under its retry policy.
  virtual result<void> open() = 0;
  /// Disconnects the device client / closes the service client.
  virtual void close() = 0;
};

class device_api : public connection_api {
 public:
  virtual std::string device_id() const = 0;
  virtual bool can_reject() const = 0;
  virtual bool can_abandon() const = 0;
  virtual result<std::optional<message>> receive(duration timeout) = 0;
  /// 405001 where the transport cannot settle with `d` (MQTT to IoT Hub).
  virtual result<void> settle(const lock_token& token, disposition d) = 0;
};

class service_api : public connection_api {
 public:
  virtual result<enqueue_receipt> send(std::string_view device_id, message m) = 0;
  virtual result<std::size_t> purge(std::string_view device_id) = 0;
  virtual result<std::size_t> queue_depth(std::string_view device_id) = 0;
  virtual result<std::optional<feedback_batch>> receive_feedback(duration timeout) = 0;
  virtual result<void> settle_feedback(const lock_token& token, feedback_disposition d) = 0;
};

/// `Client` (a `device_client<T>` or `service_client<T>`) behind `Api`. `keep` is
/// what the transport needs alive (the in-process hub); it is destroyed after
/// the client.
template <class Api, class Client>
class client_impl : public Api {
 public:
  template <class... Args>
  explicit client_impl(std::shared_ptr<void> keep, Args&&... args)
      : keep_(std::move(keep)), client_(std::forward<Args>(args)...) {}

  connection_status status() const override { return client_.status(); }
  void set_status_callback(connection_status_callback cb) override {
    client_.set_connection_status_callback(std::move(cb));
  }

 protected:
  std::shared_ptr<void> keep_;
  Client client_;
};

/// `device_client<Transport>` as a `device_api`.
template <class Transport>
class device_impl final : public client_impl<device_api, device_client<Transport>> {
  using base = client_impl<device_api, device_client<Transport>>;

 public:
  device_impl(std::shared_ptr<void> keep, Transport t, retry::policy p, device_client_options o)
      : base(std::move(keep), std::move(t), std::move(p), o) {}

  std::string device_id() const override { return std::string(this->client_.device_id()); }
  bool can_reject() const override { return transport_traits<Transport>::can_reject; }
  bool can_abandon() const override { return transport_traits<Transport>::can_abandon; }
  result<void> open() override { return this->client_.connect(); }
  void close() override { this->client_.disconnect(); }
  result<std::optional<message>> receive(duration timeout) override {
    return this->client_.receive(timeout);
  }
  result<void> settle(const lock_token& token, disposition d) override {
    return this->client_.settle(token, d);
  }
};

/// `service_client<Transport>` as a `service_api`.
template <class Transport>
class service_impl final : public client_impl<service_api, service_client<Transport>> {
  using base = client_impl<service_api, service_client<Transport>>;

 public:
  service_impl(std::shared_ptr<void> keep, Transport t, retry::policy p, service_client_options o)
      : base(std::move(keep), std::move(t), std::move(p), std::move(o)) {}

  result<void> open() override { return this->client_.open(); }
  void close() override { this->client_.close(); }
  result<enqueue_receipt> send(std::string_view device_id, message m) override {
    return this->client_.send(device_id, std::move(m));
  }
  result<std::size_t> purge(std::string_view device_id) override {
    return this->client_.purge(device_id);
  }
  result<std::size_t> queue_depth(std::string_view device_id) override {
    return this->client_.queue_depth(device_id);
  }
  result<std::optional<feedback_batch>> receive_feedback(duration timeout) override {
    return this->client_.receive_feedback(timeout);
  }
  result<void> settle_feedback(const lock_token& token, feedback_disposition d) override {
    feedback_batch b;
    b.lock_token = token;
    return d == feedback_disposition::complete ? this->client_.complete_feedback(b)
                                               : this->client_.abandon_feedback(b);
  }
};

}  // namespace devicebound::node
