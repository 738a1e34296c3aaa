// devicebound._native: the C++ side of python/bench.py. The same work as the Python
// loop, with the same types: the embedded hub on the same clock, the same clients
// and retry policy; send -> receive -> complete, one message at a time.

#include <chrono>
#include <cstdint>
#include <devicebound/transport/inproc.hpp>
#include <string>

#include "native.hpp"

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

void init_bench(py::module_& m) {
  m.def(
      "bench_inproc_round_trips",
      [](std::uint64_t n, std::size_t body_size, bool driver) {
        try {
          return without_gil([&] { return inproc_round_trips(n, body_size, driver); });
        } catch (const devicebound::exception& e) {
          raise(e.error());
        }
      },
      py::arg("n"), py::arg("body_size"), py::arg("driver") = true,
      "Seconds the C++ clients take for n rounds of send -> receive -> complete in process.");
}

}  // namespace devicebound::python
