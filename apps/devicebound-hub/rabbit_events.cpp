#include "rabbit_events.hpp"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <spdlog/spdlog.h>
#include <sys/time.h>

#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>
#include <utility>

namespace devicebound::hubd {

namespace {

std::string_view view(amqp_bytes_t b) {
  return b.len == 0 ? std::string_view()
                    : std::string_view(static_cast<const char*>(b.bytes), b.len);
}

amqp_bytes_t bytes(std::string_view s) {
  amqp_bytes_t b;
  b.len = s.size();
  b.bytes = const_cast<char*>(s.data());
  return b;
}

std::optional<std::string> string_of(const amqp_field_value_t& v) {
  if (v.kind == AMQP_FIELD_KIND_UTF8 || v.kind == AMQP_FIELD_KIND_BYTES)
    return std::string(view(v.value.bytes));
  return std::nullopt;
}

/// What `rabbit::note_of` needs from a received message.
rabbit::incoming read(const amqp_envelope_t& env) {
  rabbit::incoming in;
  in.routing_key = std::string(view(env.routing_key));
  const amqp_basic_properties_t& p = env.message.properties;
  if ((p._flags & AMQP_BASIC_HEADERS_FLAG) == 0)
    return in;
  for (int i = 0; i < p.headers.num_entries; ++i) {
    const amqp_table_entry_t& e = p.headers.entries[i];
    const std::string_view key = view(e.key);
    if (key == "queue") {
      in.queue = string_of(e.value);
    } else if (key == "name") {
      in.name = string_of(e.value);
    } else if (key == "source_name") {
      in.source_name = string_of(e.value);
    } else if (key == "destination_name") {
      in.destination_name = string_of(e.value);
    } else if (key == "routing_key") {
      in.binding_key = string_of(e.value);
    } else if (key == "routing_keys" && e.value.kind == AMQP_FIELD_KIND_ARRAY) {
      const amqp_array_t& a = e.value.value.array;
      for (int j = 0; j < a.num_entries; ++j)
        if (auto s = string_of(a.entries[j]))
          in.routing_keys.push_back(std::move(*s));
    }
  }
  return in;
}

/// The error of a failed RPC, for the log.
std::string describe(const amqp_rpc_reply_t& r, std::string_view what) {
  std::string out(what);
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return out + ": ok";
    case AMQP_RESPONSE_NONE:
      return out + ": no reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      return out + ": " + amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const auto* m = static_cast<const amqp_connection_close_t*>(r.reply.decoded);
        return out + ": connection closed by the server: " + std::to_string(m->reply_code) + " " +
               std::string(view(m->reply_text));
      }
      if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const auto* m = static_cast<const amqp_channel_close_t*>(r.reply.decoded);
        return out + ": channel closed by the server: " + std::to_string(m->reply_code) + " " +
               std::string(view(m->reply_text));
      }
      return out + ": server exception";
  }
  return out;
}

}  // namespace

struct rabbit_events::impl {
  rabbit_events_config config;
  sink emit;
  std::jthread thread;
  std::mutex m;
  std::condition_variable_any cv;
  /// The last session got as far as consuming: the next connection is tried at once
  /// (the node went away; haproxy or the client's address list may have another).
  bool consumed = false;
  /// Until then, a failed connection is retried every 50 ms (after a consuming session).
  std::chrono::steady_clock::time_point fast_until{};
  /// The session queues seen so far: re-checked after each reconnect.
  rabbit::known_sessions known;

  /// One connection: connect, bind, consume until it fails or `st` stops it.
  /// The error that ended it.
  std::string session(std::stop_token st, bool& announced) {
    amqp_connection_state_t conn = amqp_new_connection();
    struct closer {
      amqp_connection_state_t c;
      bool open = false;
      ~closer() {
        if (open) {
          (void)amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
          (void)amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        }
        amqp_destroy_connection(c);
      }
    } guard{conn};
    amqp_socket_t* socket = amqp_tcp_socket_new(conn);
    if (socket == nullptr)
      return "cannot create a socket";
    timeval connect_timeout{5, 0};
    if (int rc = amqp_socket_open_noblock(socket, config.url.host.c_str(), config.url.port,
                                          &connect_timeout);
        rc != AMQP_STATUS_OK)
      return "cannot connect to " + config.url.host + ":" + std::to_string(config.url.port) + ": " +
             amqp_error_string2(rc);
    timeval rpc_timeout{10, 0};
    (void)amqp_set_rpc_timeout(conn, &rpc_timeout);
    if (auto r = amqp_login(conn, "/", 0, 131072, 30, AMQP_SASL_METHOD_PLAIN,
                            config.url.user.c_str(), config.url.password.c_str());
        r.reply_type != AMQP_RESPONSE_NORMAL)
      return describe(r, "login as '" + config.url.user + "'");
    amqp_channel_open(conn, 1);
    if (auto r = amqp_get_rpc_reply(conn); r.reply_type != AMQP_RESPONSE_NORMAL)
      return describe(r, "channel.open");
    guard.open = true;
    // A server-named queue, exclusive and auto-deleted: gone with this connection.
    amqp_queue_declare_ok_t* q =
        amqp_queue_declare(conn, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    if (q == nullptr)
      return describe(amqp_get_rpc_reply(conn), "queue.declare");
    const std::string queue(view(q->queue));
    for (auto [exchange, key] :
         {std::pair<std::string_view, std::string_view>{rabbit::event_exchange, "consumer.created"},
          {rabbit::event_exchange, "consumer.deleted"},
          {rabbit::trace_exchange, "deliver.#"}}) {
      amqp_queue_bind(conn, 1, bytes(queue), bytes(exchange), bytes(key), amqp_empty_table);
      if (auto r = amqp_get_rpc_reply(conn); r.reply_type != AMQP_RESPONSE_NORMAL)
        return describe(r, "queue.bind to " + std::string(exchange) + " '" + std::string(key) +
                               "' (is rabbitmq_event_exchange enabled?)");
    }
    amqp_basic_consume(conn, 1, bytes(queue), amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
    if (auto r = amqp_get_rpc_reply(conn); r.reply_type != AMQP_RESPONSE_NORMAL)
      return describe(r, "basic.consume");
    spdlog::info("RabbitMQ events: consuming {} and {} at {}:{} (queue {})", rabbit::event_exchange,
                 rabbit::trace_exchange, config.url.host, config.url.port, queue);
    announced = false;
    consumed = true;
    rabbit::presence_tracker presence(config.binding_grace);
    const auto send = [&](std::vector<broker_event> events) {
      for (auto& e : events)
        emit(std::move(e));
    };
    // A reconnect: what happened to the known sessions meanwhile (now that the
    // events are consumed again, nothing after this look is missed).
    if (!known.devices().empty()) {
      std::size_t consuming = 0;
      std::size_t checked = 0;
      const std::vector<std::string> devices(known.devices().begin(), known.devices().end());
      amqp_channel_open(conn, 2);
      if (auto r = amqp_get_rpc_reply(conn); r.reply_type != AMQP_RESPONSE_NORMAL)
        return describe(r, "channel.open (re-check)");
      for (const auto& d : devices) {
        const std::string name =
            std::string(rabbit::session_queue_prefix) + d + std::string(rabbit::session_queue_qos1);
        amqp_queue_declare_ok_t* ok =
            amqp_queue_declare(conn, 2, bytes(name), 1, 0, 0, 0, amqp_empty_table);
        std::optional<std::uint32_t> consumers;
        if (ok != nullptr) {
          consumers = ok->consumer_count;
        } else {
          const amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
          if (r.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION ||
              r.reply.id != AMQP_CHANNEL_CLOSE_METHOD)
            return describe(r, "queue.declare (passive) of " + name);
          // 404: no such session. The channel is closed: acknowledge, open it again.
          amqp_channel_close_ok_t close_ok{};
          (void)amqp_send_method(conn, 2, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
          amqp_channel_open(conn, 2);
          if (auto again = amqp_get_rpc_reply(conn); again.reply_type != AMQP_RESPONSE_NORMAL)
            return describe(again, "channel.open (re-check)");
        }
        auto e = known.recheck(d, consumers);
        ++checked;
        if (e.what == broker_event::kind::subscribed)
          ++consuming;
        // a session that exists is bound: its next consumer is subscribed at once
        if (consumers)
          (void)presence.on({rabbit::note::kind::bound, d, {}}, system_clock{}.now());
        emit(std::move(e));
      }
      (void)amqp_channel_close(conn, 2, AMQP_REPLY_SUCCESS);
      spdlog::info(
          "RabbitMQ events: re-checked {} known device session(s) after reconnecting: {} "
          "consumed (subscribed), {} not (disconnected)",
          checked, consuming, checked - consuming);
    }
    while (!st.stop_requested()) {
      send(presence.tick(system_clock{}.now()));
      amqp_maybe_release_buffers(conn);
      amqp_envelope_t env;
      timeval wait{0, 200000};  // to look at the stop token
      const amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &wait, 0);
      if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
        continue;
      if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        guard.open = false;
        return describe(r, "consuming");
      }
      const rabbit::incoming in = read(env);
      amqp_destroy_envelope(&env);
      if (auto n = rabbit::note_of(in, config.hub_client_id)) {
        spdlog::debug("RabbitMQ event {}: device '{}'", in.routing_key, n->device);
        known.on(*n);
        send(presence.on(*n, system_clock{}.now()));
      }
    }
    return {};
  }

  void run(std::stop_token st) {
    bool announced = false;
    while (!st.stop_requested()) {
      std::string why = session(st, announced);
      if (st.stop_requested())
        return;
      // The node went away while we consumed: try again at once, then every 50 ms
      // for one reconnect interval (haproxy or the address may lead to another node).
      const auto now = std::chrono::steady_clock::now();
      if (std::exchange(consumed, false)) {
        spdlog::warn(
            "RabbitMQ events: {}; reconnecting at once, then every 50 ms for {} ms (presence "
            "and delivery events sent meanwhile are lost)",
            why, std::chrono::duration_cast<std::chrono::milliseconds>(config.reconnect).count());
        fast_until = now + config.reconnect;
        continue;
      }
      if (!announced) {
        spdlog::warn(
            "RabbitMQ events: {}; retrying every {} ms (presence and delivery events "
            "sent meanwhile are lost)",
            why, std::chrono::duration_cast<std::chrono::milliseconds>(config.reconnect).count());
        announced = true;
      } else {
        spdlog::debug("RabbitMQ events: {}", why);
      }
      const auto wait =
          now < fast_until ? duration(std::chrono::milliseconds(50)) : config.reconnect;
      std::unique_lock<std::mutex> g(m);
      cv.wait_for(g, st, wait, [] { return false; });
    }
  }
};

rabbit_events::rabbit_events(rabbit_events_config c) : impl_(std::make_unique<impl>()) {
  impl_->config = std::move(c);
}

rabbit_events::~rabbit_events() {
  stop();
}

result<void> rabbit_events::start(sink s) {
  if (impl_->thread.joinable())
    return make_error(errc::argument_invalid, "the RabbitMQ event consumer is already started");
  impl_->emit = std::move(s);
  impl_->thread = std::jthread([this](std::stop_token st) { impl_->run(std::move(st)); });
  return {};
}

void rabbit_events::stop() {
  if (impl_->thread.joinable()) {
    impl_->thread.request_stop();
    impl_->thread.join();
  }
}

}  // namespace devicebound::hubd
