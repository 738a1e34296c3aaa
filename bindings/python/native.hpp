/// \file bindings/python/native.hpp
/// What the translation units of `devicebound._native` share: the clock the
/// embedded hub runs on, errors to Python exceptions, message and feedback
/// values to and from Python, and the client handles with their thread rules.
///
/// The module only translates types and threads (DESIGN principle 5); the
/// Python API (classes, enums, asyncio) is python/devicebound/.
///
/// Thread rules, which every function here keeps:
/// - Every call into a client, a hub or a clock releases the GIL first: client
///   threads call back into Python (handlers, status and error callbacks) while
///   holding the client's locks, so a caller that kept the GIL while waiting for
///   such a lock would deadlock.
/// - Callbacks from C++ threads take the GIL only while the interpreter is
///   alive and not shutting down; otherwise a message handler fails (the client
///   abandons the message where it can) and other callbacks are dropped.
/// - A client is destroyed with the GIL released (its threads may be waiting
///   for the GIL to finish a handler), and the Python callables it held are
///   released with the GIL held.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <devicebound/clock.hpp>
#include <devicebound/device_client.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/feedback.hpp>
#include <devicebound/hub.hpp>
#include <devicebound/message.hpp>
#include <devicebound/retry.hpp>
#include <devicebound/service_client.hpp>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

namespace devicebound::python {

namespace py = pybind11;

// ---------------------------------------------------------------------------------------------
// The clock of the embedded hub
// ---------------------------------------------------------------------------------------------

/// Real time, or a shared `manual_clock` for tests: one clock type, so the
/// embedded hub and its clients are compiled once for both.
class any_clock {
 public:
  any_clock() = default;
  explicit any_clock(manual_clock c) : manual_(std::move(c)) {}

  time_point now() const { return manual_ ? manual_->now() : system_clock{}.now(); }

  void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable_any& cv,
                  time_point deadline) const {
    if (manual_)
      manual_->wait_until(lock, cv, deadline);
    else
      system_clock{}.wait_until(lock, cv, deadline);
  }

  const std::optional<manual_clock>& manual() const noexcept { return manual_; }

 private:
  std::optional<manual_clock> manual_;
};
static_assert(devicebound::clock<any_clock>);

// ---------------------------------------------------------------------------------------------
// The interpreter's life
// ---------------------------------------------------------------------------------------------

/// Set by `_native._shutdown()` (the package's atexit hook) and by module teardown.
inline std::atomic<bool>& python_exiting() {
  static std::atomic<bool> flag{false};
  return flag;
}

/// Whether a C++ thread may take the GIL now.
inline bool interpreter_alive() {
  if (python_exiting().load(std::memory_order_acquire) || !Py_IsInitialized())
    return false;
#if PY_VERSION_HEX >= 0x030D0000
  return !Py_IsFinalizing();
#else
  return !_Py_IsFinalizing();
#endif
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// `devicebound.errors._from_native(code, name, message)`, registered at import.
/// Kept as a strong reference that is never released: it must outlive every
/// thread that might raise, and the interpreter frees it at exit anyway.
inline PyObject*& error_factory() {
  static PyObject* factory = nullptr;
  return factory;
}

/// `str` from UTF-8 bytes; bytes that are not UTF-8 become U+FFFD.
inline py::str to_py_str(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o)
    throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

/// Sets the Python error for `e` (an instance of the DeviceboundError subclass for its code).
inline void set_python_error(const error& e) {
  if (PyObject* f = error_factory()) {
    PyObject* exc =
        PyObject_CallFunction(f, "IOO", static_cast<unsigned int>(e.numeric()),
                              to_py_str(to_string(e.code)).ptr(), to_py_str(e.message).ptr());
    if (!exc)
      return;  // the factory's own error is set
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    Py_DECREF(exc);
    return;
  }
  const std::string text =
      std::to_string(e.numeric()) + " " + std::string(to_string(e.code)) + ": " + e.message;
  PyErr_SetString(PyExc_RuntimeError, text.c_str());
}

/// Raises `e` in Python (GIL held).
[[noreturn]] inline void raise(const error& e) {
  set_python_error(e);
  throw py::error_already_set();
}

[[noreturn]] inline void raise(errc code, std::string message) {
  raise(make_error(code, std::move(message)));
}

/// The value of `r`, or raises its error (GIL held).
template <class T>
T take(result<T>&& r) {
  if (!r)
    raise(r.error());
  return std::move(*r);
}
inline void take(result<void>&& r) {
  if (!r)
    raise(r.error());
}

/// Calls that released the GIL and have not taken it back yet.
inline std::atomic<int>& calls_without_gil() {
  static std::atomic<int> n{0};
  return n;
}

/// Clients being destroyed on a thread of their own (their last reference was
/// dropped on one of their own threads, which cannot join itself). Until such a
/// thread has joined the client's threads, they may still run Python code (a
/// handler that sees its client gone returns after a short sleep): `_shutdown()`
/// waits for these too, so that none of them is in Python when the interpreter
/// finalizes (CPython ends such a thread with a forced unwind, which aborts).
inline std::atomic<int>& detached_destroys() {
  static std::atomic<int> n{0};
  return n;
}

/// Runs `f` with the GIL released and returns what it returns.
///
/// At exit (after `_shutdown()`) it keeps the GIL: a thread that takes the GIL back
/// while the interpreter finalizes is ended by CPython with a forced unwind, which
/// cannot pass the noexcept destructor of `gil_scoped_release`. No C++ thread takes
/// the GIL any more by then, and every client is closed, so nothing waits for it.
template <class F>
auto without_gil(F&& f) -> decltype(f()) {
  if (python_exiting().load(std::memory_order_acquire))
    return f();
  struct counted {
    counted() { calls_without_gil().fetch_add(1, std::memory_order_acq_rel); }
    ~counted() { calls_without_gil().fetch_sub(1, std::memory_order_acq_rel); }
    counted(const counted&) = delete;
    counted& operator=(const counted&) = delete;
  } count;  // destroyed after the GIL is taken back
  py::gil_scoped_release unlocked;
  return f();
}

// ---------------------------------------------------------------------------------------------
// Plain values
// ---------------------------------------------------------------------------------------------

inline std::int64_t to_ms(time_point t) noexcept {
  return t.time_since_epoch().count();
}
inline time_point from_ms(std::int64_t ms) noexcept {
  return time_point(duration(ms));
}

inline py::object opt_ms(const std::optional<time_point>& t) {
  return t ? py::reinterpret_steal<py::object>(PyLong_FromLongLong(to_ms(*t))) : py::none();
}

inline py::object opt_str(const std::optional<std::string>& s) {
  return s ? static_cast<py::object>(to_py_str(*s)) : py::none();
}

/// A `str` argument as UTF-8; `what` names it in the TypeError.
inline std::string utf8(py::handle h, const char* what) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_Check(h.ptr()) ? PyUnicode_AsUTF8AndSize(h.ptr(), &n) : nullptr;
  if (!p) {
    if (!PyErr_Occurred())
      PyErr_Format(PyExc_TypeError, "%s must be a str, not %s", what, Py_TYPE(h.ptr())->tp_name);
    throw py::error_already_set();
  }
  return std::string(p, static_cast<std::size_t>(n));
}

inline std::optional<std::string> opt_utf8(py::handle h, const char* what) {
  if (h.is_none())
    return std::nullopt;
  return utf8(h, what);
}

inline std::optional<time_point> opt_time(py::handle h, const char* what) {
  if (h.is_none())
    return std::nullopt;
  const long long v = PyLong_AsLongLong(h.ptr());
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "%s must be milliseconds since the epoch (int)", what);
    throw py::error_already_set();
  }
  return from_ms(v);
}

/// The largest value of `T` that a `long long` holds.
template <class T>
constexpr long long max_ll() noexcept {
  if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(long long))
    return std::numeric_limits<long long>::max();
  else
    return static_cast<long long>(std::numeric_limits<T>::max());
}

/// An integer argument in [lo, hi]; out of range is 400004 naming `what`.
template <class T>
T int_in_range(py::handle h, const char* what, long long lo = std::numeric_limits<T>::min(),
               long long hi = max_ll<T>()) {
  const long long v = PyLong_AsLongLong(h.ptr());
  if (v == -1 && PyErr_Occurred()) {
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "%s must be an int, not %s", what, Py_TYPE(h.ptr())->tp_name);
      throw py::error_already_set();
    }
    PyErr_Clear();
    raise(errc::argument_invalid, std::string(what) + " is out of range");
  }
  if (v < lo || v > hi)
    raise(errc::argument_invalid, std::string(what) + " must be between " + std::to_string(lo) +
                                      " and " + std::to_string(hi) + ", got " + std::to_string(v));
  return static_cast<T>(v);
}

inline lock_token parse_token(py::handle h) {
  if (h.is_none())
    raise(errc::argument_invalid, "the message has no lock token: it was not received");
  const std::string s = utf8(h, "lock_token");
  auto t = lock_token::parse(s);
  if (!t)
    raise(errc::argument_invalid, "'" + s.substr(0, 40) + "' is not a lock token (a GUID)");
  return *t;
}

/// The message a Python `Message` describes, from its fields (see `Message._fields_for_send`).
inline message message_from(py::handle body, py::handle props, py::handle message_id,
                            py::handle correlation_id, py::handle user_id, py::handle to,
                            py::handle expiry_ms, py::handle ack, py::handle content_type,
                            py::handle content_encoding, py::handle creation_ms) {
  message m;
  char* data = nullptr;
  Py_ssize_t n = 0;
  if (!PyBytes_Check(body.ptr()) || PyBytes_AsStringAndSize(body.ptr(), &data, &n) != 0) {
    PyErr_Format(PyExc_TypeError, "body must be bytes, not %s", Py_TYPE(body.ptr())->tp_name);
    throw py::error_already_set();
  }
  m.body.assign(data, static_cast<std::size_t>(n));
  if (!props.is_none()) {
    if (!PyDict_Check(props.ptr())) {
      PyErr_Format(PyExc_TypeError, "properties must be a dict, not %s",
                   Py_TYPE(props.ptr())->tp_name);
      throw py::error_already_set();
    }
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    Py_ssize_t pos = 0;
    while (PyDict_Next(props.ptr(), &pos, &key, &value))
      m.app_properties.insert_or_assign(utf8(key, "a property name"),
                                        utf8(value, "a property value"));
  }
  m.message_id = opt_utf8(message_id, "message_id");
  m.correlation_id = opt_utf8(correlation_id, "correlation_id");
  m.user_id = opt_utf8(user_id, "user_id");
  m.to = opt_utf8(to, "to");
  m.expiry_time_utc = opt_time(expiry_ms, "expiry_time_utc");
  m.ack = static_cast<ack_mode>(int_in_range<int>(ack, "ack", 0, 3));
  m.content_type = opt_utf8(content_type, "content_type");
  m.content_encoding = opt_utf8(content_encoding, "content_encoding");
  m.creation_time_utc = opt_time(creation_ms, "creation_time_utc");
  return m;
}

/// A received message as the tuple `Message._from_native` reads:
/// (body, properties, message_id, correlation_id, user_id, to, expiry_ms, ack,
///  content_type, content_encoding, creation_ms, sequence_number, enqueued_ms,
///  delivery_count, lock_token).
inline py::tuple message_to_py(const message& m) {
  py::dict props;
  for (const auto& [k, v] : m.app_properties)
    props[to_py_str(k)] = to_py_str(v);
  py::tuple t(15);
  t[0] = py::bytes(m.body.data(), m.body.size());
  t[1] = std::move(props);
  t[2] = opt_str(m.message_id);
  t[3] = opt_str(m.correlation_id);
  t[4] = opt_str(m.user_id);
  t[5] = opt_str(m.to);
  t[6] = opt_ms(m.expiry_time_utc);
  t[7] = py::int_(static_cast<int>(m.ack));
  t[8] = opt_str(m.content_type);
  t[9] = opt_str(m.content_encoding);
  t[10] = opt_ms(m.creation_time_utc);
  t[11] = py::int_(m.sequence_number);
  t[12] = opt_ms(m.enqueued_time_utc);
  t[13] = py::int_(m.delivery_count);
  t[14] = m.lock_token ? static_cast<py::object>(py::str(m.lock_token->to_string())) : py::none();
  return t;
}

/// A feedback batch as (records, enqueued_ms, user_id, lock_token, delivery_count), each
/// record (original_message_id, enqueued_ms, status, description, device_id, generation_id).
inline py::tuple feedback_to_py(const feedback_batch& b) {
  py::list records(b.records.size());
  for (std::size_t i = 0; i < b.records.size(); ++i) {
    const auto& r = b.records[i];
    records[i] = py::make_tuple(to_py_str(r.original_message_id), to_ms(r.enqueued_time_utc),
                                static_cast<int>(r.status_code), to_py_str(r.description),
                                to_py_str(r.device_id), to_py_str(r.device_generation_id));
  }
  return py::make_tuple(std::move(records), to_ms(b.enqueued_time_utc), to_py_str(b.user_id),
                        b.lock_token.to_string(), b.delivery_count);
}

// ---------------------------------------------------------------------------------------------
// Configuration dicts (the Python dataclasses flatten to these)
// ---------------------------------------------------------------------------------------------

/// Reads the keys of a configuration dict; a key that no field reads is a TypeError.
class config_reader {
 public:
  config_reader(py::handle d, const char* what) : what_(what) {
    if (!PyDict_Check(d.ptr())) {
      PyErr_Format(PyExc_TypeError, "%s must be a dict", what);
      throw py::error_already_set();
    }
    dict_ = py::reinterpret_borrow<py::dict>(d);
  }

  /// The value of `key`, or nullptr when absent or None.
  PyObject* get(const char* key) {
    ++read_;
    PyObject* v = PyDict_GetItemString(dict_.ptr(), key);
    if (!v) {
      --read_;
      return nullptr;
    }
    return v == Py_None ? nullptr : v;
  }

  template <class T>
  void integer(const char* key, T& out, long long lo = std::numeric_limits<T>::min(),
               long long hi = max_ll<T>()) {
    if (PyObject* v = get(key))
      out = int_in_range<T>(v, key, lo, hi);
  }
  void millis(const char* key, duration& out) {
    if (PyObject* v = get(key))
      out = duration(int_in_range<std::int64_t>(v, key));
  }
  template <class E>
  void enumeration(const char* key, E& out, int max) {
    if (PyObject* v = get(key))
      out = static_cast<E>(int_in_range<int>(v, key, 0, max));
  }
  void boolean(const char* key, bool& out) {
    if (PyObject* v = get(key))
      out = PyObject_IsTrue(v) == 1;
  }
  void real(const char* key, double& out) {
    if (PyObject* v = get(key)) {
      const double d = PyFloat_AsDouble(v);
      if (d == -1.0 && PyErr_Occurred())
        throw py::error_already_set();
      out = d;
    }
  }
  void text(const char* key, std::string& out) {
    if (PyObject* v = get(key))
      out = utf8(v, key);
  }

  /// Fails on keys that were not read (a typo in the Python layer, or a field added on one side
  /// only).
  void done() {
    if (static_cast<Py_ssize_t>(read_) != PyDict_Size(dict_.ptr())) {
      PyErr_Format(PyExc_TypeError, "%s has unknown keys", what_);
      throw py::error_already_set();
    }
  }

 private:
  py::dict dict_;
  const char* what_;
  std::size_t read_ = 0;
};

/// A retry policy from its configuration dict (`RetryPolicy._to_native`); None: the default policy.
retry::policy policy_from(py::handle config);

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// The Python objects of one client. They are only touched with the GIL held.
struct callbacks {
  py::object message_handler;   ///< (tuple) -> int disposition, or -1 when it raised
  py::object feedback_handler;  ///< (tuple) -> int: 0 complete, 1 abandon, -1 raised
  py::object status;            ///< (status: int, reason: int) -> None
  py::object error;             ///< (code: int, message: str) -> None
  py::object keep;              ///< what the client points into (the in-process hub)

  /// Drops the references without touching reference counts (interpreter gone).
  void leak() {
    (void)message_handler.release();
    (void)feedback_handler.release();
    (void)status.release();
    (void)error.release();
    (void)keep.release();
  }
};

/// True on a client's own thread while it runs Python code for the client.
inline bool& in_client_callback() {
  thread_local bool flag = false;
  return flag;
}

/// Marks the current thread as running a client callback, for the scope.
class client_callback_scope {
 public:
  client_callback_scope() : was_(in_client_callback()) { in_client_callback() = true; }
  ~client_callback_scope() { in_client_callback() = was_; }
  client_callback_scope(const client_callback_scope&) = delete;
  client_callback_scope& operator=(const client_callback_scope&) = delete;

 private:
  bool was_;
};

/// Calls a Python callback from any thread; drops it when the interpreter is exiting.
template <class F>
void call_python(F&& f, const char* where) {
  if (!interpreter_alive())
    return;
  client_callback_scope scope;
  py::gil_scoped_acquire gil;
  try {
    f();
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable(where);
  }
}

/// A client and its Python callables. Shared by the Python handle and by every call in
/// flight, so that `close()` on one thread cannot free a client another thread is using.
template <class Client>
struct client_box {
  std::unique_ptr<Client> client;
  callbacks py;

  /// Deleter: the client goes first, with the GIL released; then the Python objects, with
  /// it held. On one of the client's own threads (the last reference dropped inside a
  /// handler) the client cannot join that thread: another thread destroys it.
  static void destroy(client_box* b) {
    if (in_client_callback()) {
      detached_destroys().fetch_add(1, std::memory_order_acq_rel);
      std::thread([b] {
        b->client.reset();
        if (!interpreter_alive()) {
          b->py.leak();
          delete b;
        } else {
          py::gil_scoped_acquire gil;
          delete b;
        }
        detached_destroys().fetch_sub(1, std::memory_order_acq_rel);
      }).detach();
      return;
    }
    if (!Py_IsInitialized()) {
      b->client.reset();
      b->py.leak();
      delete b;
      return;
    }
    if (PyGILState_Check()) {
      without_gil([&] { b->client.reset(); });  // counted: see _shutdown()
      delete b;
      return;
    }
    b->client.reset();
    if (!interpreter_alive()) {
      b->py.leak();
      delete b;
      return;
    }
    py::gil_scoped_acquire gil;
    delete b;
  }
};

template <class Client>
using box_ptr = std::shared_ptr<client_box<Client>>;

/// Wires the status and error callbacks of a new client to its box; `keep` stays
/// alive until the client is gone.
template <class Client>
box_ptr<Client> make_box(std::unique_ptr<Client> client, py::object keep = py::object()) {
  auto* raw = new client_box<Client>{std::move(client), {}};
  raw->py.keep = std::move(keep);
  box_ptr<Client> box(raw, &client_box<Client>::destroy);
  callbacks* cb = &raw->py;
  raw->client->set_connection_status_callback(
      [cb](connection_status s, connection_status_reason r) {
        call_python(
            [&] {
              if (cb->status)
                cb->status(static_cast<int>(s), static_cast<int>(r));
            },
            "devicebound connection status callback");
      });
  raw->client->set_error_handler([cb](const error& e) {
    call_python(
        [&] {
          if (cb->error)
            cb->error(e.numeric(), to_py_str(e.message));
        },
        "devicebound error handler");
  });
  return box;
}

/// The Python handle of a client: the box until `close()`.
template <class Client>
struct client_handle {
  box_ptr<Client> box;

  /// The box for one call (a copy: keeps the client alive while the GIL is released).
  box_ptr<Client> get() const {
    if (!box)
      raise(errc::invalid_operation, "the client is closed");
    return box;
  }
};

/// Calls a handler that returns an int from a client thread, with the argument that
/// `make_arg()` builds once the GIL is held. Raising, or returning a value outside
/// [0, max] (the Python layer returns -1 when the user's handler raised), throws: the
/// client then abandons the message where it can and reports to the error handler.
template <class MakeArg>
int call_handler(const py::object& handler, MakeArg&& make_arg, int max) {
  if (!interpreter_alive())
    throw std::runtime_error("the Python interpreter is shutting down");
  client_callback_scope scope;
  py::gil_scoped_acquire gil;
  if (!handler)
    throw std::runtime_error("no handler is set");
  long v = -1;
  try {
    py::object r = handler(make_arg());
    v = PyLong_AsLong(r.ptr());
    if (v == -1 && PyErr_Occurred())
      throw py::error_already_set();
  } catch (py::error_already_set& e) {
    throw std::runtime_error(e.what());
  }
  if (v < 0 || v > max)
    throw std::runtime_error("the handler raised an exception");
  return static_cast<int>(v);
}

/// Binds what every device client has, whatever its transport.
template <class Client>
void bind_device_methods(py::class_<client_handle<Client>>& cls) {
  using handle = client_handle<Client>;
  using traits = transport_traits<typename Client::transport_type>;
  cls.def_property_readonly(
      "device_id", [](const handle& h) { return to_py_str(h.get()->client->device_id()); });
  cls.def_property_readonly("can_reject", [](const handle&) { return traits::can_reject; });
  cls.def_property_readonly("can_abandon", [](const handle&) { return traits::can_abandon; });
  cls.def_property_readonly("closed", [](const handle& h) { return !h.box; });
  cls.def("status", [](const handle& h) { return static_cast<int>(h.get()->client->status()); });
  cls.def("connect", [](const handle& h) {
    auto b = h.get();
    take(without_gil([&] { return b->client->connect(); }));
  });
  cls.def("disconnect", [](const handle& h) {
    auto b = h.get();
    without_gil([&] { b->client->disconnect(); });
  });
  cls.def("close", [](handle& h) {
    auto b = std::move(h.box);
    if (!b)
      return;
    without_gil([&] {
      b->client->set_message_handler(nullptr);
      b->client->disconnect();
    });
    b->py.message_handler = py::object();
  });
  cls.def("receive", [](const handle& h, std::int64_t timeout_ms) -> py::object {
    auto b = h.get();
    auto r = without_gil([&] { return b->client->receive(duration(timeout_ms)); });
    auto m = take(std::move(r));
    if (!m)
      return py::none();
    return message_to_py(*m);
  });
  cls.def("settle", [](const handle& h, py::handle token, int d) {
    auto b = h.get();
    const lock_token t = parse_token(token);
    if (d < 0 || d > 2)
      raise(errc::argument_invalid, "disposition must be complete (0), reject (1) or abandon (2)");
    take(without_gil([&] { return b->client->settle(t, static_cast<disposition>(d)); }));
  });
  cls.def("set_message_handler", [](const handle& h, py::object f) {
    auto b = h.get();
    if (f.is_none()) {
      without_gil([&] { b->client->set_message_handler(nullptr); });
      b->py.message_handler = py::object();
      return;
    }
    b->py.message_handler = std::move(f);
    callbacks* cb = &b->py;
    without_gil([&] {
      b->client->set_message_handler([cb](const message& m) {
        return static_cast<disposition>(call_handler(
            cb->message_handler, [&] { return message_to_py(m); }, 2));
      });
    });
  });
  cls.def("set_status_callback", [](const handle& h, py::object f) {
    h.get()->py.status = f.is_none() ? py::object() : std::move(f);
  });
  cls.def("set_error_handler", [](const handle& h, py::object f) {
    h.get()->py.error = f.is_none() ? py::object() : std::move(f);
  });
}

/// Binds what every service client has, whatever its transport.
template <class Client>
void bind_service_methods(py::class_<client_handle<Client>>& cls) {
  using handle = client_handle<Client>;
  using traits = transport_traits<typename Client::transport_type>;
  cls.def_property_readonly("closed", [](const handle& h) { return !h.box; });
  cls.def("status", [](const handle& h) { return static_cast<int>(h.get()->client->status()); });
  cls.def("open", [](const handle& h) {
    auto b = h.get();
    take(without_gil([&] { return b->client->open(); }));
  });
  cls.def("close", [](handle& h) {
    auto b = std::move(h.box);
    if (!b)
      return;
    without_gil([&] { b->client->close(); });
    b->py.feedback_handler = py::object();
  });
  cls.def("send", [](const handle& h, py::handle device_id, py::handle body, py::handle props,
                     py::handle message_id, py::handle correlation_id, py::handle user_id,
                     py::handle to, py::handle expiry_ms, py::handle ack, py::handle content_type,
                     py::handle content_encoding, py::handle creation_ms) {
    auto b = h.get();
    std::string id = utf8(device_id, "device_id");
    message m = message_from(body, props, message_id, correlation_id, user_id, to, expiry_ms, ack,
                             content_type, content_encoding, creation_ms);
    auto r = take(without_gil([&] { return b->client->send(id, std::move(m)); }));
    return py::make_tuple(r.sequence_number, to_ms(r.expiry_time_utc));
  });
  // A transport that cannot purge or read a depth (AMQP: IoT Hub offers them over
  // HTTPS only) refuses at compile time in C++; Python gets NotSupportedError.
  cls.def_property_readonly("can_purge", [](const handle&) { return traits::can_purge; });
  cls.def("purge", [](const handle& h, py::handle device_id) -> std::size_t {
    auto b = h.get();
    std::string id = utf8(device_id, "device_id");
    if constexpr (traits::can_purge)
      return take(without_gil([&] { return b->client->purge(id); }));
    else
      raise(errc::not_supported,
            "this transport cannot purge a device queue (IoT Hub: HTTPS only)");
  });
  cls.def("queue_depth", [](const handle& h, py::handle device_id) -> std::size_t {
    auto b = h.get();
    std::string id = utf8(device_id, "device_id");
    if constexpr (traits::can_query_queue_depth)
      return take(without_gil([&] { return b->client->queue_depth(id); }));
    else
      raise(errc::not_supported, "this transport cannot read a queue depth (IoT Hub: HTTPS only)");
  });
  cls.def("receive_feedback", [](const handle& h, std::int64_t timeout_ms) -> py::object {
    auto b = h.get();
    auto r = take(without_gil([&] { return b->client->receive_feedback(duration(timeout_ms)); }));
    if (!r)
      return py::none();
    return feedback_to_py(*r);
  });
  cls.def("settle_feedback", [](const handle& h, py::handle token, bool complete) {
    auto b = h.get();
    feedback_batch batch;
    batch.lock_token = parse_token(token);
    take(without_gil([&] {
      return complete ? b->client->complete_feedback(batch) : b->client->abandon_feedback(batch);
    }));
  });
  cls.def("set_feedback_handler", [](const handle& h, py::object f) {
    auto b = h.get();
    if (f.is_none()) {
      without_gil([&] { b->client->set_feedback_handler(nullptr); });
      b->py.feedback_handler = py::object();
      return;
    }
    b->py.feedback_handler = std::move(f);
    callbacks* cb = &b->py;
    without_gil([&] {
      b->client->set_feedback_handler([cb](const feedback_batch& batch) {
        return call_handler(
                   cb->feedback_handler, [&] { return feedback_to_py(batch); }, 1) == 0
                   ? feedback_disposition::complete
                   : feedback_disposition::abandon;
      });
    });
  });
  cls.def("set_status_callback", [](const handle& h, py::object f) {
    h.get()->py.status = f.is_none() ? py::object() : std::move(f);
  });
  cls.def("set_error_handler", [](const handle& h, py::object f) {
    h.get()->py.error = f.is_none() ? py::object() : std::move(f);
  });
}

/// The service-client options from the Python keyword arguments.
inline service_client_options service_options(bool assign_message_id,
                                              std::optional<std::uint64_t> seed,
                                              std::int64_t feedback_receive_timeout_ms) {
  service_client_options o;
  o.assign_message_id =
      assign_message_id ? message_id_assignment::when_unset : message_id_assignment::never;
  o.random_seed = seed;
  o.feedback_receive_timeout = duration(feedback_receive_timeout_ms);
  return o;
}

inline device_client_options device_options(std::optional<std::uint64_t> seed,
                                            std::int64_t receive_timeout_ms) {
  device_client_options o;
  o.random_seed = seed;
  o.receive_timeout = duration(receive_timeout_ms);
  return o;
}

// Defined in their translation units, called from module.cpp.
void init_inproc(py::module_& m);
void init_mqtt(py::module_& m);
void init_amqp(py::module_& m);

}  // namespace devicebound::python
