// devicebound._bench: the C++ side of python/bench.py. The same work as the Python
// loop, with the same types: the embedded hub on the same clock, the same clients
// and retry policy; send -> receive -> complete, one message at a time.
//
// A module of its own, built only with DEVICEBOUND_PYTHON_BENCH=ON (a development
// install), so that the wheel users install carries no benchmark code.

#include <chrono>
#include <cstdint>
#include <devicebound/transport/inproc.hpp>
#include <string>

#include "../native.hpp"

namespace devicebound::python {

namespace {

/// Seconds for `n` rounds of send -> receive -> complete with a `body_size`-byte body;
/// `driver`: with the hub's timer thread running, as devicebound.Hub has by default.
double inproc_round_trips(std::uint64_t n, std::size_t body_size, bool driver) {
  inproc::hub_host<any_clock> host;
  if (driver)
    host.start_driver();
  host.add_device("bench").value();
  device_client<inproc::device_connection<any_clock>, retry::policy> device(host.device("bench"));
  service_client<inproc::service_connection<any_clock>, retry::policy> service(host.service());
  device.connect().value();
  service.open().value();

  message m;
  m.body.assign(body_size, 'x');
  m.message_id = "bench";
  const auto start = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    service.send("bench", m).value();
    auto got = device.receive(std::chrono::seconds(10)).value();
    if (!got)
      throw std::runtime_error("bench: no message within 10 s");
    device.complete(*got).value();
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

}  // namespace devicebound::python

PYBIND11_MODULE(_bench, m) {
  namespace dbp = devicebound::python;
  namespace py = pybind11;
  m.doc() = "python/bench.py's C++ loop (development builds only).";
  // Errors raised here are devicebound's own exception classes, as from _native.
  dbp::error_factory() =
      py::object(py::module_::import("devicebound.errors").attr("_from_native")).release().ptr();
  m.def(
      "bench_inproc_round_trips",
      [](std::uint64_t n, std::size_t body_size, bool driver) {
        try {
          return dbp::without_gil([&] { return dbp::inproc_round_trips(n, body_size, driver); });
        } catch (const devicebound::exception& e) {
          dbp::raise(e.error());
        }
      },
      py::arg("n"), py::arg("body_size"), py::arg("driver") = true,
      "Seconds the C++ clients take for n rounds of send -> receive -> complete in process.");
}
