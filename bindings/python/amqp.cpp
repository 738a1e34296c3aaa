// devicebound._native: clients over AMQP (transport/amqp.hpp), built from IoT Hub
// connection strings; they reach devicebound-hub's AMQP door or an IoT hub.
// Built only when Qpid Proton C++ and libcrypto are found.

#include <chrono>
#include <cstdint>
#include <devicebound/transport/amqp.hpp>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "native.hpp"

namespace devicebound::python {

namespace {

using amqp_device = device_client<amqp::device_connection, retry::policy>;
using amqp_service = service_client<amqp::service_connection, retry::policy>;

/// `AmqpOptions._to_native()`: TLS and the transport's knobs (the identity is the
/// connection string).
amqp::connection_options options_from(py::handle h) {
  config_reader r(h, "AMQP options");
  amqp::connection_options o;
  bool tls = true;
  r.boolean("tls", tls);
  amqp::tls_options t;
  r.text("ca_file", t.ca_file);
  r.boolean("verify_server", t.verify_server);
  o.tls = tls ? std::optional<amqp::tls_options>(t) : std::nullopt;
  std::int64_t ttl_s = o.token_ttl.count();
  r.integer("token_ttl_s", ttl_s, 1);
  o.token_ttl = std::chrono::seconds(ttl_s);
  r.real("token_renew_at", o.token_renew_at);
  r.millis("connect_timeout_ms", o.connect_timeout);
  r.millis("request_timeout_ms", o.request_timeout);
  r.millis("idle_timeout_ms", o.idle_timeout);
  r.integer("prefetch", o.prefetch, 1);
  r.done();
  return o;
}

}  // namespace

void init_amqp(py::module_& m) {
  using device_handle = client_handle<amqp_device>;
  py::class_<device_handle> device(m, "AmqpDevice");
  device.def(py::init([](py::handle options, py::handle connection_string, py::handle retry,
                         std::optional<std::uint64_t> seed, std::int64_t receive_timeout_ms) {
               amqp::connection_options o = options_from(options);
               const std::string cs = utf8(connection_string, "connection_string");
               auto policy = policy_from(retry);
               auto t = take(amqp::device_connection::from_connection_string(cs, std::move(o)));
               auto client = std::make_unique<amqp_device>(
                   std::move(t), std::move(policy), device_options(seed, receive_timeout_ms));
               return device_handle{make_box(std::move(client))};
             }),
             py::arg("options"), py::arg("connection_string"), py::arg("retry") = py::none(),
             py::arg("seed") = py::none(), py::arg("receive_timeout_ms") = 60000);
  bind_device_methods(device);

  using service_handle = client_handle<amqp_service>;
  py::class_<service_handle> service(m, "AmqpService");
  service.def(py::init([](py::handle options, py::handle connection_string, py::handle retry,
                          bool assign_message_id, std::optional<std::uint64_t> seed,
                          std::int64_t feedback_receive_timeout_ms) {
                amqp::connection_options o = options_from(options);
                const std::string cs = utf8(connection_string, "connection_string");
                auto policy = policy_from(retry);
                auto t = take(amqp::service_connection::from_connection_string(cs, std::move(o)));
                auto client = std::make_unique<amqp_service>(
                    std::move(t), std::move(policy),
                    service_options(assign_message_id, seed, feedback_receive_timeout_ms));
                return service_handle{make_box(std::move(client))};
              }),
              py::arg("options"), py::arg("connection_string"), py::arg("retry") = py::none(),
              py::arg("assign_message_id") = false, py::arg("seed") = py::none(),
              py::arg("feedback_receive_timeout_ms") = 60000);
  bind_service_methods(service);
}

}  // namespace devicebound::python
