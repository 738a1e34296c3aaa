// devicebound: the C2D how-to end to end in one process, with no broker.
//
// A device app (its own thread) receives cloud-to-device messages and settles
// each one: set-points are completed, an out-of-range one is rejected, a
// "flaky" one is abandoned until the hub dead-letters it, and a "slow" one is
// handled too slowly the first time, so its lock expires and it comes back.
// A back-end app (another thread) sends them with ack=full and prints the
// delivery feedback as it arrives. Real time (system_clock), with a short lock
// and short feedback batching so the demo finishes in about two seconds.
#include <chrono>
#include <cstdio>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/device_client.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/transport/inproc.hpp>
#include <future>
#include <mutex>
#include <string>
#include <thread>

using namespace devicebound;
using namespace std::chrono_literals;

namespace {

std::mutex print_mutex;

template <class... Args>
void say(const char* format, Args... args) {
  std::lock_guard<std::mutex> g(print_mutex);
  if constexpr (sizeof...(Args) == 0)
    std::fputs(format, stdout);
  else
    std::printf(format, args...);
  std::fflush(stdout);
}

}  // namespace

int main() {
  hub_config config;
  config.name = "example-hub";
  config.lock_duration = 1s;               // IoT Hub: 1 minute (SPEC 1.5)
  config.max_delivery_count = 3;           // IoT Hub default: 10
  config.feedback_batch_interval = 200ms;  // IoT Hub: 15 s (SPEC 4.3)
  inproc::hub_host<system_clock> host(config);
  host.start_driver();  // keeps lock expiries and feedback batches on time
  host.add_device("thermostat-1").value();

  // --- the device app ---------------------------------------------------------------
  device_client device(host.device("thermostat-1"), retry::policy(retry::profiles::c_sdk()));
  device.set_connection_status_callback([](connection_status s, connection_status_reason r) {
    say("[device]  connection %s (%s)\n", std::string(to_string(s)).c_str(),
        std::string(to_string(r)).c_str());
  });
  device.set_error_handler([](const error& e) {
    say("[device]  error %u %s: %s\n", e.numeric(), std::string(to_string(e.code)).c_str(),
        e.message.c_str());
  });
  bool slow_first_time = true;  // only the handler thread touches it
  device.set_message_handler([&](const message& m) {
    const std::string id = m.message_id.value_or("-");
    say("[device]  received %-7s '%s' seq %llu, delivery count %u, lock %s\n", id.c_str(),
        m.body.c_str(), static_cast<unsigned long long>(m.sequence_number), m.delivery_count,
        m.lock_token->to_string().c_str());
    if (id == "set-99") {
      say("[device]  -> reject: 99 degrees is out of range\n");
      return disposition::reject;
    }
    if (id == "flaky") {
      say("[device]  -> abandon: try again later\n");
      return disposition::abandon;
    }
    if (id == "slow" && slow_first_time) {
      slow_first_time = false;
      say("[device]  -> working on it for longer than the 1 s lock...\n");
      std::this_thread::sleep_for(1200ms);  // simulated slow work: the completion will be refused
    }
    say("[device]  -> complete\n");
    return disposition::complete;
  });

  // --- the back-end app ---------------------------------------------------------------
  constexpr int expected_records = 6;
  std::promise<void> all_feedback;
  bool ok = false;
  std::thread backend_app([&] {
    service_client backend(host.service(), retry::policy(retry::profiles::c_sdk()));
    int records = 0;
    backend.set_feedback_handler([&](const feedback_batch& b) {
      say("[backend] feedback batch of %zu record(s) from %s:\n", b.records.size(),
          b.user_id.c_str());
      for (const auto& r : b.records)
        say("[backend]   %-7s %-21s at %s\n", r.original_message_id.c_str(),
            std::string(to_string(r.status_code)).c_str(),
            codec::format_iso8601(r.enqueued_time_utc).c_str());
      records += static_cast<int>(b.records.size());
      if (records == expected_records)
        all_feedback.set_value();
      return feedback_disposition::complete;
    });

    for (const auto& [id, body] :
         {std::pair{"set-21", "{\"target\":21}"}, std::pair{"set-99", "{\"target\":99}"},
          std::pair{"flaky", "{\"target\":20}"}, std::pair{"slow", "{\"firmware\":\"2.1\"}"},
          std::pair{"set-22", "{\"target\":22}"}, std::pair{"set-23", "{\"target\":23}"}}) {
      message m;
      m.message_id = id;
      m.body = body;
      m.content_type = "application/json";
      auto receipt = backend.send("thermostat-1", m, ack_mode::full);
      if (!receipt) {
        say("[backend] send %s failed: %s\n", id, receipt.error().message.c_str());
        return;
      }
      say("[backend] sent %-7s (ack=full), sequence number %llu\n", id,
          static_cast<unsigned long long>(receipt->sequence_number));
    }
    ok = all_feedback.get_future().wait_for(10s) == std::future_status::ready;
    if (!ok)
      say("[backend] timed out waiting for feedback\n");
    backend.set_feedback_handler(nullptr);
  });
  backend_app.join();
  device.disconnect();

  const auto s = host.stats();
  say("accepted %llu: completed %llu, rejected %llu, delivery count exceeded %llu\n",
      static_cast<unsigned long long>(s.accepted), static_cast<unsigned long long>(s.completed),
      static_cast<unsigned long long>(s.rejected),
      static_cast<unsigned long long>(s.delivery_count_exceeded));
  const bool accounted = s.accepted == s.completed + s.rejected + s.delivery_count_exceeded;
  return ok && accounted ? 0 : 1;
}
