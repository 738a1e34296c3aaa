// devicebound._native: clients over MQTT (transport/mqtt.hpp), talking to
// devicebound-hub through a broker. Built only when Paho MQTT C is found.

#include <cstdint>
#include <devicebound/transport/mqtt.hpp>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "native.hpp"

namespace devicebound::python {

namespace {

using mqtt_device = device_client<mqtt::extended_device_connection, retry::policy>;
using mqtt_iothub_device = device_client<mqtt::iothub_device_connection, retry::policy>;
using mqtt_service = service_client<mqtt::service_connection, retry::policy>;

mqtt::tls_options tls_from(py::handle h) {
  config_reader r(h, "tls options");
  mqtt::tls_options t;
  r.text("ca_file", t.ca_file);
  r.text("ca_path", t.ca_path);
  r.text("cert_file", t.cert_file);
  r.text("key_file", t.key_file);
  r.text("key_password", t.key_password);
  r.boolean("verify_server", t.verify_server);
  r.done();
  return t;
}

/// `Mqtt._to_native()`: the broker address and the transport's knobs.
mqtt::connection_options options_from(py::handle h) {
  config_reader r(h, "MQTT options");
  mqtt::connection_options o;
  r.text("host", o.host);
  r.integer("port", o.port, 1, 65535);
  if (PyObject* t = r.get("tls"))
    o.tls = tls_from(t);
  r.text("client_id", o.client_id);
  if (PyObject* u = r.get("username"))
    o.username = utf8(u, "username");
  if (PyObject* p = r.get("password"))
    o.password = utf8(p, "password");
  r.millis("keep_alive_ms", o.keep_alive);
  r.millis("connect_timeout_ms", o.connect_timeout);
  r.millis("request_timeout_ms", o.request_timeout);
  r.millis("attach_retry_ms", o.attach_retry);
  r.integer("prefetch", o.prefetch, 1);
  if (PyObject* c = r.get("clean_session"))
    o.clean_session = PyObject_IsTrue(c) == 1;
  r.integer("max_buffered_messages", o.max_buffered_messages, 1);
  r.done();
  return o;
}

template <class Client, class Connection>
void bind_mqtt_device(py::module_& m, const char* name) {
  using handle = client_handle<Client>;
  py::class_<handle> cls(m, name);
  cls.def(py::init([](py::handle options, py::handle id, py::handle retry,
                      std::optional<std::uint64_t> seed, std::int64_t receive_timeout_ms) {
            mqtt::connection_options o = options_from(options);
            std::string s = utf8(id, "device_id");
            auto policy = policy_from(retry);
            auto client =
                std::make_unique<Client>(Connection(std::move(s), std::move(o)), std::move(policy),
                                         device_options(seed, receive_timeout_ms));
            return handle{make_box(std::move(client))};
          }),
          py::arg("options"), py::arg("device_id"), py::arg("retry") = py::none(),
          py::arg("seed") = py::none(), py::arg("receive_timeout_ms") = 60000);
  bind_device_methods(cls);
}

}  // namespace

void init_mqtt(py::module_& m) {
  bind_mqtt_device<mqtt_device, mqtt::extended_device_connection>(m, "MqttDevice");
  bind_mqtt_device<mqtt_iothub_device, mqtt::iothub_device_connection>(m, "MqttIotHubDevice");

  using service_handle = client_handle<mqtt_service>;
  py::class_<service_handle> service(m, "MqttService");
  service.def(
      py::init([](py::handle options, py::handle retry, bool assign_message_id,
                  std::optional<std::uint64_t> seed, std::int64_t feedback_receive_timeout_ms) {
        mqtt::connection_options o = options_from(options);
        auto policy = policy_from(retry);
        auto client = std::make_unique<mqtt_service>(
            mqtt::service_connection(std::move(o)), std::move(policy),
            service_options(assign_message_id, seed, feedback_receive_timeout_ms));
        return service_handle{make_box(std::move(client))};
      }),
      py::arg("options"), py::arg("retry") = py::none(), py::arg("assign_message_id") = false,
      py::arg("seed") = py::none(), py::arg("feedback_receive_timeout_ms") = 60000);
  bind_service_methods(service);
}

}  // namespace devicebound::python
