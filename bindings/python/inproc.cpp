// devicebound._native: the embedded hub (inproc::hub_host) and the clients over it.

#include <cstdint>
#include <devicebound/hub_config.hpp>
#include <devicebound/transport/inproc.hpp>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "native.hpp"

namespace devicebound::python {

namespace {

using host_type = inproc::hub_host<any_clock>;
using inproc_device = device_client<inproc::device_connection<any_clock>, retry::policy>;
using inproc_service = service_client<inproc::service_connection<any_clock>, retry::policy>;

/// The Python `Hub`'s native part. The host is not movable (connections point at it),
/// so it lives on the heap; clients keep the handle alive (py::keep_alive).
struct hub_handle {
  std::unique_ptr<host_type> host;

  hub_handle() = default;
  hub_handle(const hub_handle&) = delete;
  hub_handle& operator=(const hub_handle&) = delete;
  ~hub_handle() {
    // The driver thread never calls Python, but joining it must not hold the GIL.
    if (host && Py_IsInitialized() && PyGILState_Check())
      without_gil([&] { host.reset(); });
  }

  host_type& get() const {
    if (!host)
      raise(errc::invalid_operation, "the hub is closed");
    return *host;
  }
};

hub_config hub_config_from(py::handle h) {
  config_reader r(h, "hub config");
  hub_config c;
  r.text("name", c.name);
  r.millis("default_ttl_ms", c.default_ttl);
  r.enumeration("expiry_over_cap", c.expiry_over_cap, static_cast<int>(expiry_cap_policy::reject));
  r.integer("max_delivery_count", c.max_delivery_count);
  r.enumeration("delivery_count", c.delivery_count,
                static_cast<int>(delivery_count_rule::every_delivery));
  r.millis("lock_duration_ms", c.lock_duration);
  r.integer("max_queue_depth", c.max_queue_depth);
  r.integer("max_message_size", c.max_message_size);
  r.millis("feedback_ttl_ms", c.feedback_ttl);
  r.integer("feedback_max_delivery_count", c.feedback_max_delivery_count);
  r.millis("feedback_lock_duration_ms", c.feedback_lock_duration);
  r.integer("feedback_batch_size", c.feedback_batch_size);
  r.millis("feedback_batch_interval_ms", c.feedback_batch_interval);
  r.enumeration("purge_feedback_for", c.purge_feedback_for, static_cast<int>(purge_feedback::none));
  r.done();
  take(c.validate());
  return c;
}

py::dict hub_config_to(const hub_config& c) {
  py::dict d;
  d["name"] = to_py_str(c.name);
  d["default_ttl_ms"] = c.default_ttl.count();
  d["expiry_over_cap"] = static_cast<int>(c.expiry_over_cap);
  d["max_delivery_count"] = c.max_delivery_count;
  d["delivery_count"] = static_cast<int>(c.delivery_count);
  d["lock_duration_ms"] = c.lock_duration.count();
  d["max_queue_depth"] = c.max_queue_depth;
  d["max_message_size"] = c.max_message_size;
  d["feedback_ttl_ms"] = c.feedback_ttl.count();
  d["feedback_max_delivery_count"] = c.feedback_max_delivery_count;
  d["feedback_lock_duration_ms"] = c.feedback_lock_duration.count();
  d["feedback_batch_size"] = c.feedback_batch_size;
  d["feedback_batch_interval_ms"] = c.feedback_batch_interval.count();
  d["purge_feedback_for"] = static_cast<int>(c.purge_feedback_for);
  return d;
}

py::tuple stats_to(const hub_stats& s) {
  return py::make_tuple(s.accepted, s.completed, s.rejected, s.expired, s.delivery_count_exceeded,
                        s.purged, s.removed_with_device, s.feedback_records,
                        s.feedback_records_dropped, s.feedback_batches);
}

}  // namespace

void init_inproc(py::module_& m) {
  py::class_<hub_handle>(m, "Hub")
      .def(py::init([](py::handle config, py::handle clock, bool driver) {
             hub_config c = hub_config_from(config);
             auto h = std::make_unique<hub_handle>();
             any_clock clk =
                 clock.is_none() ? any_clock() : any_clock(clock.cast<const manual_clock&>());
             h->host = std::make_unique<host_type>(std::move(c), std::move(clk));
             if (driver)
               h->host->start_driver();
             return h;
           }),
           py::arg("config"), py::arg("clock") = py::none(), py::arg("driver") = true)
      .def("add_device",
           [](const hub_handle& h, py::handle id) {
             std::string s = utf8(id, "device_id");
             return take(without_gil([&] { return h.get().add_device(s); }));
           })
      .def("remove_device",
           [](const hub_handle& h, py::handle id) {
             std::string s = utf8(id, "device_id");
             take(without_gil([&] { return h.get().remove_device(s); }));
           })
      .def("has_device",
           [](const hub_handle& h, py::handle id) {
             std::string s = utf8(id, "device_id");
             return without_gil(
                 [&] { return h.get().with_hub([&](hub& x) { return x.has_device(s); }); });
           })
      .def("device_count",
           [](const hub_handle& h) {
             return without_gil(
                 [&] { return h.get().with_hub([](hub& x) { return x.device_count(); }); });
           })
      .def("generation_id",
           [](const hub_handle& h, py::handle id) {
             std::string s = utf8(id, "device_id");
             return take(without_gil(
                 [&] { return h.get().with_hub([&](hub& x) { return x.generation_id(s); }); }));
           })
      .def("queue_depth",
           [](const hub_handle& h, py::handle id) {
             std::string s = utf8(id, "device_id");
             auto& host = h.get();
             return take(without_gil([&] {
               return host.with_hub([&](hub& x) { return x.queue_depth(s, host.clock().now()); });
             }));
           })
      .def("stats",
           [](const hub_handle& h) {
             return stats_to(without_gil([&] { return h.get().stats(); }));
           })
      .def("config",
           [](const hub_handle& h) {
             return hub_config_to(
                 without_gil([&] { return h.get().with_hub([](hub& x) { return x.config(); }); }));
           })
      .def("now_ms", [](const hub_handle& h) { return to_ms(h.get().clock().now()); })
      .def("pump",
           [](const hub_handle& h) -> std::optional<std::int64_t> {
             auto next = without_gil([&] { return h.get().pump(); });
             if (!next)
               return std::nullopt;
             return to_ms(*next);
           })
      .def("start_driver",
           [](const hub_handle& h) { without_gil([&] { h.get().start_driver(); }); })
      .def("stop_driver", [](const hub_handle& h) { without_gil([&] { h.get().stop_driver(); }); })
      .def("driver_running", [](const hub_handle& h) { return h.get().driver_running(); })
      .def("close", [](hub_handle& h) {
        // Clients keep the Python Hub (and so this handle) alive, and they point at the
        // host: only the driver stops here; the host goes with the last reference.
        if (h.host)
          without_gil([&] { h.host->stop_driver(); });
      });
  m.def(
      "check_hub_config", [](py::handle config) { return hub_config_to(hub_config_from(config)); },
      "Checks a hub configuration dict; returns it as the hub would run it.");

  using device_handle = client_handle<inproc_device>;
  py::class_<device_handle> device(m, "InprocDevice");
  // The box keeps the Python hub alive: its connection points at the host, and the
  // box may outlive the Python handle (a call in flight on another thread).
  device.def(py::init([](py::object hub_obj, py::handle id, py::handle retry,
                         std::optional<std::uint64_t> seed, std::int64_t receive_timeout_ms) {
               const hub_handle& h = hub_obj.cast<const hub_handle&>();
               std::string s = utf8(id, "device_id");
               auto policy = policy_from(retry);
               auto client =
                   std::make_unique<inproc_device>(h.get().device(std::move(s)), std::move(policy),
                                                   device_options(seed, receive_timeout_ms));
               return device_handle{make_box(std::move(client), std::move(hub_obj))};
             }),
             py::arg("hub"), py::arg("device_id"), py::arg("retry") = py::none(),
             py::arg("seed") = py::none(), py::arg("receive_timeout_ms") = 60000);
  bind_device_methods(device);

  using service_handle = client_handle<inproc_service>;
  py::class_<service_handle> service(m, "InprocService");
  service.def(
      py::init([](py::object hub_obj, py::handle retry, bool assign_message_id,
                  std::optional<std::uint64_t> seed, std::int64_t feedback_receive_timeout_ms) {
        const hub_handle& h = hub_obj.cast<const hub_handle&>();
        auto policy = policy_from(retry);
        auto client = std::make_unique<inproc_service>(
            h.get().service(), std::move(policy),
            service_options(assign_message_id, seed, feedback_receive_timeout_ms));
        return service_handle{make_box(std::move(client), std::move(hub_obj))};
      }),
      py::arg("hub"), py::arg("retry") = py::none(), py::arg("assign_message_id") = false,
      py::arg("seed") = py::none(), py::arg("feedback_receive_timeout_ms") = 60000);
  bind_service_methods(service);
}

}  // namespace devicebound::python
