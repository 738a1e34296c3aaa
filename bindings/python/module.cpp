// devicebound._native: the module, errors, the manual clock and retry policies.
// Clients and the hub are in inproc.cpp and mqtt.cpp. The benchmark loop is not here: it is
// devicebound._bench (bench/bench.cpp), built only for development (DEVICEBOUND_PYTHON_BENCH).

#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <devicebound/version.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "native.hpp"

namespace devicebound::python {

namespace {

// --- retry policies <-> dicts (`RetryPolicy._to_native` / `_from_native`) --------------------

retry::backoff_config backoff_from(py::handle h) {
  config_reader r(h, "backoff");
  retry::backoff_config c;
  r.enumeration("kind", c.kind, static_cast<int>(retry::backoff_kind::random));
  r.millis("initial_ms", c.initial);
  r.millis("cap_ms", c.cap);
  r.millis("floor_ms", c.floor);
  r.enumeration("jitter_shape", c.jitter.shape, static_cast<int>(retry::jitter_shape::additive));
  r.real("jitter_low", c.jitter.low);
  r.real("jitter_high", c.jitter.high);
  r.millis("jitter_threshold_ms", c.jitter.threshold);
  r.done();
  return c;
}

py::dict backoff_to(const retry::backoff_config& c) {
  py::dict d;
  d["kind"] = static_cast<int>(c.kind);
  d["initial_ms"] = c.initial.count();
  d["cap_ms"] = c.cap.count();
  d["floor_ms"] = c.floor.count();
  d["jitter_shape"] = static_cast<int>(c.jitter.shape);
  d["jitter_low"] = c.jitter.low;
  d["jitter_high"] = c.jitter.high;
  d["jitter_threshold_ms"] = c.jitter.threshold.count();
  return d;
}

retry::policy_config policy_config_from(py::handle h) {
  config_reader r(h, "retry policy");
  retry::policy_config c;
  if (PyObject* b = r.get("backoff"))
    c.backoff = backoff_from(b);
  if (PyObject* t = r.get("throttled"))
    c.throttled = backoff_from(t);
  r.enumeration("first_retry", c.opts.first, static_cast<int>(retry::first_retry::fast));
  r.millis("first_retry_delay_ms", c.opts.first_retry_delay);
  r.millis("timeout_ms", c.opts.timeout);
  r.enumeration("timeout_from", c.opts.timeout_from,
                static_cast<int>(retry::timeout_origin::first_retry));
  r.integer("max_retries", c.opts.max_retries);
  r.boolean("reset_on_success", c.opts.reset_on_success);
  r.millis("min_spacing_ms", c.opts.min_spacing);
  r.enumeration("wait_from", c.opts.wait_from, static_cast<int>(retry::wait_origin::attempt_start));
  r.boolean("whole_seconds", c.opts.whole_seconds);
  r.enumeration("error_table", c.errors.table, static_cast<int>(retry::error_table::java));
  if (PyObject* o = r.get("overrides")) {
    for (py::handle item : py::reinterpret_borrow<py::iterable>(o)) {
      auto pair = py::reinterpret_borrow<py::tuple>(item);
      if (pair.size() != 2)
        raise(errc::argument_invalid, "retry overrides must be (code, error class) pairs");
      const auto code = static_cast<errc>(int_in_range<std::uint32_t>(pair[0], "error code"));
      const auto cls = static_cast<retry::error_class>(int_in_range<int>(
          pair[1], "error class", 0, static_cast<int>(retry::error_class::fatal)));
      c.errors.set(code, cls);
    }
  }
  r.done();
  return c;
}

py::dict policy_config_to(const retry::policy_config& c) {
  py::dict d;
  d["backoff"] = backoff_to(c.backoff);
  d["throttled"] = c.throttled ? static_cast<py::object>(backoff_to(*c.throttled)) : py::none();
  d["first_retry"] = static_cast<int>(c.opts.first);
  d["first_retry_delay_ms"] = c.opts.first_retry_delay.count();
  d["timeout_ms"] = c.opts.timeout.count();
  d["timeout_from"] = static_cast<int>(c.opts.timeout_from);
  d["max_retries"] = c.opts.max_retries;
  d["reset_on_success"] = c.opts.reset_on_success;
  d["min_spacing_ms"] = c.opts.min_spacing.count();
  d["wait_from"] = static_cast<int>(c.opts.wait_from);
  d["whole_seconds"] = c.opts.whole_seconds;
  d["error_table"] = static_cast<int>(c.errors.table);
  py::list overrides;
  for (const auto& [code, cls] : c.errors.overrides)
    overrides.append(py::make_tuple(static_cast<std::uint32_t>(code), static_cast<int>(cls)));
  d["overrides"] = std::move(overrides);
  return d;
}

/// The first `n` waits of a policy for failures of class `cls` (None: it would give up),
/// drawing jitter from a generator seeded with `seed`.
std::vector<std::optional<std::int64_t>> policy_delays(py::handle config, std::uint32_t n, int cls,
                                                       std::uint64_t seed) {
  const retry::policy p = policy_from(config);
  if (cls < 0 || cls > static_cast<int>(retry::error_class::fatal))
    raise(errc::argument_invalid, "error class must be transient (0), throttled (1) or fatal (2)");
  retry::default_random rnd{std::mt19937_64(seed)};
  std::vector<std::optional<std::int64_t>> out;
  out.reserve(n);
  for (std::uint32_t k = 0; k < n; ++k) {
    auto d = p.delay(k, static_cast<retry::error_class>(cls), rnd);
    out.push_back(d ? std::optional<std::int64_t>(d->count()) : std::nullopt);
  }
  return out;
}

}  // namespace

retry::policy policy_from(py::handle config) {
  if (config.is_none())
    return retry::policy{};
  if (PyUnicode_Check(config.ptr()))
    return take(retry::profiles::profile(utf8(config, "retry profile")));
  return take(retry::make_policy(policy_config_from(config)));
}

#ifndef DEVICEBOUND_PYTHON_WITH_MQTT
void init_mqtt(py::module_&) {}  // built without Paho: the package reports MQTT as unavailable
#endif
#ifndef DEVICEBOUND_PYTHON_WITH_AMQP
void init_amqp(py::module_&) {}  // built without Proton: the package reports AMQP as unavailable
#endif

}  // namespace devicebound::python

namespace py = pybind11;
namespace dbp = devicebound::python;
namespace db = devicebound;

PYBIND11_MODULE(_native, m) {
  m.doc() = "devicebound's native module: marshalling only (the API is the devicebound package)";
  m.attr("version") = std::string(db::version);
#ifdef DEVICEBOUND_PYTHON_WITH_MQTT
  m.attr("has_mqtt") = true;
#else
  m.attr("has_mqtt") = false;
#endif
#ifdef DEVICEBOUND_PYTHON_WITH_AMQP
  m.attr("has_amqp") = true;
#else
  m.attr("has_amqp") = false;
#endif

  m.def(
      "_set_error_factory",
      [](py::object f) {
        PyObject*& slot = dbp::error_factory();
        Py_XDECREF(slot);
        slot = f.release().ptr();
      },
      "Registers `f(code, name, message) -> exception`, which builds the exception for an error.");
  m.def(
      "_shutdown",
      [](double wait_s) {
        dbp::python_exiting().store(true, std::memory_order_release);
        // Threads woken by closing their clients are on their way back into Python:
        // let them take the GIL before the interpreter starts finalizing. Clients
        // dropped on their own threads (no longer tracked by the package) are being
        // destroyed on threads of their own: wait until their threads are joined.
        const auto deadline =
            std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_s);
        py::gil_scoped_release unlocked;
        while ((dbp::calls_without_gil().load(std::memory_order_acquire) > 0 ||
                dbp::detached_destroys().load(std::memory_order_acquire) > 0) &&
               std::chrono::steady_clock::now() < deadline)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
      },
      py::arg("wait_s") = 5.0,
      "Stops C++ threads from calling into Python, and waits (up to wait_s) for calls that "
      "released the GIL to return; the package calls it at exit, after closing every client.");
  // The library throws devicebound::exception only from constructors; the bindings
  // check configurations first, so this is a safety net.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p)
        std::rethrow_exception(p);
    } catch (const db::exception& e) {
      dbp::set_python_error(e.error());
    }
  });

  // --- errors -------------------------------------------------------------------------
  m.def(
      "error_name",
      [](std::uint32_t code) { return std::string(db::to_string(static_cast<db::errc>(code))); },
      "IoT Hub's name of an error code (`DeviceMaximumQueueDepthExceeded` for 403004).");

  // --- manual clock -------------------------------------------------------------------
  py::class_<db::manual_clock>(m, "ManualClock")
      .def(py::init([](std::optional<std::int64_t> start_ms) {
             return db::manual_clock(start_ms ? dbp::from_ms(*start_ms)
                                              : db::manual_clock::default_start);
           }),
           py::arg("start_ms") = py::none())
      .def("now_ms", [](const db::manual_clock& c) { return dbp::to_ms(c.now()); })
      .def("advance_ms",
           [](db::manual_clock& c, std::int64_t ms) {
             dbp::without_gil([&] { c.advance(db::duration(ms)); });
           })
      .def("advance_to_ms",
           [](db::manual_clock& c, std::int64_t ms) {
             dbp::without_gil([&] { c.advance_to(dbp::from_ms(ms)); });
           })
      .def("waiting_deadlines_ms",
           [](const db::manual_clock& c) {
             auto ds = dbp::without_gil([&] { return c.waiting_deadlines(); });
             std::vector<std::int64_t> out;
             for (auto d : ds)
               out.push_back(dbp::to_ms(d));
             return out;
           })
      .def("await_waiter_ms", [](const db::manual_clock& c, std::int64_t deadline_ms,
                                 double real_timeout_s) {
        const auto limit = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(real_timeout_s));
        return dbp::without_gil([&] { return c.await_waiter(dbp::from_ms(deadline_ms), limit); });
      });

  // --- retry --------------------------------------------------------------------------
  m.def("retry_profile_names", [] {
    std::vector<std::string> names;
    for (auto n : db::retry::profiles::names)
      names.emplace_back(n);
    return names;
  });
  m.def(
      "retry_profile",
      [](const std::string& name) {
        return dbp::policy_config_to(
            db::retry::to_config(dbp::take(db::retry::profiles::profile(name))));
      },
      "The configuration of an SDK retry profile, as a dict.");
  m.def(
      "retry_check",
      [](py::handle config) {
        return dbp::policy_config_to(db::retry::to_config(dbp::policy_from(config)));
      },
      "Checks a retry configuration (dict or profile name); returns it as the library stores it.");
  m.def("retry_delays", &dbp::policy_delays, py::arg("config"), py::arg("n"),
        py::arg("error_class"), py::arg("seed"));
  m.def(
      "retry_classify",
      [](std::uint32_t code, int table) {
        if (table < 0 || table > static_cast<int>(db::retry::error_table::java))
          dbp::raise(db::errc::argument_invalid, "unknown error table");
        return static_cast<int>(db::retry::classify(static_cast<db::errc>(code),
                                                    static_cast<db::retry::error_table>(table)));
      },
      "Classifies an error code with one SDK's table: 0 transient, 1 throttled, 2 fatal.");

  dbp::init_inproc(m);
  dbp::init_mqtt(m);
  dbp::init_amqp(m);
}
