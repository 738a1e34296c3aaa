// devicebound quickstart: the hub engine on its own, time driven by hand.
//
// Registers a device, sends messages with different ack modes, completes one,
// rejects one, abandons one until it is dead-lettered, lets one expire, and
// prints every state change and the delivery feedback as the service gets it.
#include <cstdio>
#include <devicebound/codec/feedback_json.hpp>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/hub.hpp>
#include <string>

using namespace devicebound;
using namespace std::chrono_literals;

int main() {
  // The core never reads a clock: we hand it `now` and move time ourselves.
  time_point now{std::chrono::sys_days{std::chrono::year{2026} / 11 / 26} + 9h};

  hub_config config;
  config.name = "quickstart-hub";
  config.max_delivery_count = 3;  // so the abandon loop is short
  hub h(config);                  // unguessable lock tokens from the system

  h.set_observer([](const transition& t) {
    std::string reason =
        t.reason == dead_letter_reason::none ? "" : " (" + std::string(to_string(t.reason)) + ")";
    std::printf("  [%s] #%llu %-12s %-13s %-9s -> %s%s, delivery count %u\n",
                codec::format_iso8601(t.at).c_str(),
                static_cast<unsigned long long>(t.sequence_number),
                std::string(t.message_id.value_or("-")).c_str(),
                std::string(to_string(t.cause)).c_str(), std::string(to_string(t.from)).c_str(),
                std::string(to_string(t.to)).c_str(), reason.c_str(), t.delivery_count);
  });

  std::printf("register device 'thermostat-1'\n");
  auto gen = h.add_device("thermostat-1").value();
  std::printf("  generation id %s\n", gen.c_str());

  auto send = [&](const char* id, const char* body, ack_mode ack,
                  std::optional<time_point> expiry = {}) {
    message m;
    m.message_id = id;
    m.body = body;
    m.ack = ack;
    m.expiry_time_utc = expiry;
    m.app_properties["unit"] = "celsius";
    auto r = h.enqueue("thermostat-1", std::move(m), now);
    if (!r) {
      std::printf("send %s failed: %s\n", id, r.error().message.c_str());
      return;
    }
    std::printf("sent %s (ack=%s), sequence number %llu, expires %s\n", id,
                std::string(to_string(ack)).c_str(),
                static_cast<unsigned long long>(r->sequence_number),
                codec::format_iso8601(r->expiry_time_utc).c_str());
  };

  std::printf("\nthe back end sends four messages\n");
  send("set-21", "{\"target\":21}", ack_mode::full);
  send("set-99", "{\"target\":99}", ack_mode::negative);
  send("flaky", "{\"target\":20}", ack_mode::full);
  send("short-lived", "{\"target\":19}", ack_mode::negative, now + 5min);

  auto receive = [&] {
    auto r = h.receive("thermostat-1", now).value();
    if (r)
      std::printf("device received %s: %s (lock %s)\n", r->message_id->c_str(), r->body.c_str(),
                  r->lock_token->to_string().c_str());
    return r;
  };

  std::printf("\nthe device completes the first and rejects the second\n");
  auto m1 = receive();
  h.complete("thermostat-1", *m1->lock_token, now).value();
  auto m2 = receive();
  h.reject("thermostat-1", *m2->lock_token, now).value();

  std::printf("\nthe device abandons 'flaky' until the hub dead-letters it\n");
  for (;;) {
    now += 1s;
    auto m = receive();
    if (!m || *m->message_id != "flaky")
      break;
    h.abandon("thermostat-1", *m->lock_token, now).value();
    if (h.queue_depth("thermostat-1", now).value() == 1)
      break;  // only short-lived is left
  }

  std::printf("\na settlement with a stale lock token is refused and changes nothing\n");
  auto stale = h.complete("thermostat-1", *m1->lock_token, now);
  std::printf("  %u %s: %s\n", stale.error().numeric(),
              std::string(to_string(stale.code())).c_str(), stale.error().message.c_str());

  std::printf("\nten minutes pass: 'short-lived' expires\n");
  now += 10min;
  h.tick(now);
  std::printf("  queue depth now %zu\n", h.queue_depth("thermostat-1", now).value());

  std::printf("\nthe back end reads delivery feedback\n");
  now += 15s;
  h.tick(now);
  while (auto batch = h.receive_feedback(now).value()) {
    std::printf("  batch of %zu record(s), userId %s, content type %s\n", batch->records.size(),
                batch->user_id.c_str(), std::string(feedback_content_type).c_str());
    std::printf("  %s\n", codec::encode_feedback_json(batch->records).c_str());
    h.complete_feedback(batch->lock_token, now).value();
  }

  const auto& s = h.stats();
  std::printf(
      "\naccepted %llu: completed %llu, rejected %llu, delivery count exceeded %llu, expired "
      "%llu\n",
      static_cast<unsigned long long>(s.accepted), static_cast<unsigned long long>(s.completed),
      static_cast<unsigned long long>(s.rejected),
      static_cast<unsigned long long>(s.delivery_count_exceeded),
      static_cast<unsigned long long>(s.expired));
  const bool all_accounted =
      s.accepted == s.completed + s.rejected + s.delivery_count_exceeded + s.expired;
  return all_accounted ? 0 : 1;
}
