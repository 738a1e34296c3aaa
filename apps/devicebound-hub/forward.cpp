#include "forward.hpp"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

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

/// A random uuid (version 4) as text: a forwarded request's id.
std::string new_request_id(std::mt19937_64& rng) {
  lock_token t;
  for (std::size_t i = 0; i < 16; i += 8) {
    const std::uint64_t v = rng();
    for (std::size_t j = 0; j < 8; ++j)
      t.bytes[i + j] = static_cast<std::uint8_t>(v >> (8 * j));
  }
  t.bytes[6] = static_cast<std::uint8_t>((t.bytes[6] & 0x0F) | 0x40);
  t.bytes[8] = static_cast<std::uint8_t>((t.bytes[8] & 0x3F) | 0x80);
  return t.to_string();
}

constexpr int channel = 1;
constexpr std::string_view reply_consumer = "reply";

}  // namespace

struct forward_door::impl {
  forward_config config;
  door_id id = 0;
  request_sink sink;
  std::jthread thread;
  int wake_fd = -1;
  std::mt19937_64 rng{std::random_device{}()};

  // --- shared with the engine thread (under m) ---
  std::mutex m;
  struct forward_cmd {
    std::uint32_t k;
    reply_to caller;
    forward::forwarded_request what;
  };
  struct answer_cmd {
    delivery_ref to;
    forward::answer_what what;
  };
  std::deque<forward_cmd> to_forward;
  std::deque<answer_cmd> to_answer;
  std::deque<delivery_ref> to_requeue;
  std::set<std::uint32_t> served;  ///< what the engine serves now
  bool served_changed = false;
  std::vector<reply> answers;

  // --- the I/O thread's own ---
  struct waiting {
    reply_to caller;
    std::chrono::steady_clock::time_point deadline;
  };
  std::map<std::string, waiting> pending;  ///< correlation -> caller
  /// What the I/O thread needs to answer a delivery: by delivery tag.
  struct held {
    std::string reply_queue;
    std::string correlation;
    std::string request_id;
  };
  std::unordered_map<std::uint64_t, held> deliveries;
  std::uint64_t connection = 0;  ///< counts the connections: stale delivery tags are ignored
  std::uint64_t next_correlation = 0;

  void wake() {
    if (wake_fd >= 0) {
      const std::uint64_t one = 1;
      (void)!::write(wake_fd, &one, sizeof one);
    }
  }

  void give(reply r) {
    {
      std::lock_guard<std::mutex> g(m);
      answers.push_back(std::move(r));
    }
    // wakes the engine loop; a ping with no address is answered by nobody
    sink(inbound{reply_to{id, {}}, ping_request{}});
  }

  error busy(std::uint32_t k, std::string_view why) const {
    return make_error(errc::server_busy, "partition " + std::to_string(k) +
                                             " is not served by instance '" + config.instance +
                                             "' and forwarding it failed (" + std::string(why) +
                                             "); retry");
  }

  /// Fails every forwarded request still waiting (the connection went down).
  void fail_pending(std::string_view why) {
    for (auto& [corr, w] : pending)
      give(reply{w.caller, make_error(errc::server_busy, "the forwarded request got no answer (" +
                                                             std::string(why) + "); retry")});
    pending.clear();
  }

  /// Fails what the engine asked to forward while there is no connection.
  void refuse_queued(std::string_view why) {
    std::deque<forward_cmd> fwd;
    {
      std::lock_guard<std::mutex> g(m);
      fwd.swap(to_forward);
      to_answer.clear();  // their deliveries are back on their queues
      to_requeue.clear();
    }
    for (auto& f : fwd)
      give(reply{f.caller, busy(f.k, why)});
  }

  void run(std::stop_token st) {
    bool announced = false;
    while (!st.stop_requested()) {
      std::string why = session(st, announced);
      fail_pending(why.empty() ? "stopping" : why);
      deliveries.clear();
      if (st.stop_requested())
        break;
      if (!announced) {
        spdlog::warn("forward: {}; forwarded requests are answered 503001 until it reconnects",
                     why);
        announced = true;
      }
      // wait for the reconnect delay, refusing what comes meanwhile
      const auto until = std::chrono::steady_clock::now() + config.reconnect;
      while (!st.stop_requested() && std::chrono::steady_clock::now() < until) {
        refuse_queued("no connection to RabbitMQ: " + why);
        pollfd p{wake_fd, POLLIN, 0};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            until - std::chrono::steady_clock::now());
        if (::poll(&p, 1, static_cast<int>(std::max<long long>(left.count(), 0))) > 0) {
          std::uint64_t v;
          (void)!::read(wake_fd, &v, sizeof v);
        }
      }
    }
    refuse_queued("stopping");
  }

  bool declare(amqp_connection_state_t c, std::uint32_t k, std::set<std::uint32_t>& declared,
               std::string& why) {
    if (declared.count(k))
      return true;
    const std::string q = partition_queue(k);
    amqp_table_entry_t args[2];
    args[0].key = amqp_cstring_bytes("x-queue-type");
    args[0].value.kind = AMQP_FIELD_KIND_UTF8;
    args[0].value.value.bytes = amqp_cstring_bytes("quorum");
    args[1].key = amqp_cstring_bytes("x-single-active-consumer");
    args[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    args[1].value.value.boolean = 1;
    amqp_table_t table{2, args};
    if (!amqp_queue_declare(c, channel, bytes(q), 0, 1, 0, 0, table)) {
      why = describe(amqp_get_rpc_reply(c), "queue.declare " + q);
      return false;
    }
    declared.insert(k);
    return true;
  }

  /// One connection: until it fails or `st` stops it; the error that ended it.
  std::string session(std::stop_token st, bool& announced) {
    amqp_connection_state_t conn = amqp_new_connection();
    struct closer {
      amqp_connection_state_t c;
      bool open = false;
      ~closer() {
        if (open) {
          (void)amqp_channel_close(c, channel, AMQP_REPLY_SUCCESS);
          (void)amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        }
        amqp_destroy_connection(c);
      }
    } guard{conn};
    amqp_socket_t* socket = amqp_tcp_socket_new(conn);
    if (socket == nullptr)
      return "cannot create a socket";
    timeval connect_timeout{5, 0};
    if (int rc =
            amqp_socket_open_noblock(socket, config.host.c_str(), config.port, &connect_timeout);
        rc != AMQP_STATUS_OK)
      return "cannot connect to " + config.host + ":" + std::to_string(config.port) + ": " +
             amqp_error_string2(rc);
    timeval rpc_timeout{10, 0};
    (void)amqp_set_rpc_timeout(conn, &rpc_timeout);
    if (auto r = amqp_login(conn, "/", 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, config.user.c_str(),
                            config.password.c_str());
        r.reply_type != AMQP_RESPONSE_NORMAL)
      return describe(r, "login as '" + config.user + "'");
    amqp_channel_open(conn, channel);
    if (auto r = amqp_get_rpc_reply(conn); r.reply_type != AMQP_RESPONSE_NORMAL)
      return describe(r, "channel.open");
    guard.open = true;
    const auto failed = [&](std::string what) {
      guard.open = false;
      return describe(amqp_get_rpc_reply(conn), what);
    };
    if (!amqp_basic_qos(conn, channel, 0, 256, 0))
      return failed("basic.qos");
    amqp_queue_declare_ok_t* rq =
        amqp_queue_declare(conn, channel, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    if (rq == nullptr)
      return failed("queue.declare (reply queue)");
    const std::string reply_queue(view(rq->queue));
    if (!amqp_basic_consume(conn, channel, bytes(reply_queue), bytes(reply_consumer), 0, 1, 1,
                            amqp_empty_table))
      return failed("basic.consume (reply queue)");
    ++connection;
    spdlog::info("forward: connected to RabbitMQ at {}:{} (reply queue {})", config.host,
                 config.port, reply_queue);
    announced = false;

    std::set<std::uint32_t> declared;
    std::set<std::uint32_t> consuming;
    {
      std::lock_guard<std::mutex> g(m);
      served_changed = true;
    }
    std::string why;
    for (;;) {
      // 1. what the engine asked (once more when stopping: the answers released
      // last are published and acked, not left for the next owner to run again)
      const bool stopping = st.stop_requested();
      std::deque<forward_cmd> fwd;
      std::deque<answer_cmd> ans;
      std::deque<delivery_ref> req;
      std::optional<std::set<std::uint32_t>> want;
      {
        std::lock_guard<std::mutex> g(m);
        fwd.swap(to_forward);
        ans.swap(to_answer);
        req.swap(to_requeue);
        if (std::exchange(served_changed, false))
          want = served;
      }
      if (want) {
        for (auto k : *want)
          if (!consuming.count(k)) {
            if (!declare(conn, k, declared, why))
              return guard.open = false, why;
            const std::string tag = "p" + std::to_string(k);
            if (!amqp_basic_consume(conn, channel, bytes(partition_queue(k)), bytes(tag), 0, 0, 0,
                                    amqp_empty_table))
              return failed("basic.consume " + partition_queue(k));
            consuming.insert(k);
            spdlog::info("forward: consuming {}", partition_queue(k));
          }
        for (auto it = consuming.begin(); it != consuming.end();) {
          if (want->count(*it)) {
            ++it;
            continue;
          }
          const std::string tag = "p" + std::to_string(*it);
          if (!amqp_basic_cancel(conn, channel, bytes(tag)))
            return failed("basic.cancel " + partition_queue(*it));
          spdlog::info("forward: stopped consuming {}", partition_queue(*it));
          it = consuming.erase(it);
        }
      }
      for (auto& a : ans) {
        if (a.to.connection != connection)
          continue;  // that delivery went back to its queue with its connection
        auto it = deliveries.find(a.to.tag);
        if (it == deliveries.end())
          continue;
        forward::answer_frame f{it->second.correlation, it->second.request_id, std::move(a.what)};
        auto body = forward::encode(f);
        if (!body) {
          spdlog::error("forward: cannot encode the answer to request {}: {}", f.request_id,
                        body.error().message);
          body = *forward::encode(forward::answer_frame{
              f.correlation, f.request_id,
              make_error(errc::server_error, "the owner's answer cannot be forwarded")});
        }
        amqp_basic_properties_t props{};
        props._flags = AMQP_BASIC_CORRELATION_ID_FLAG;
        props.correlation_id = bytes(it->second.correlation);
        if (int rc = amqp_basic_publish(conn, channel, amqp_empty_bytes,
                                        bytes(it->second.reply_queue), 0, 0, &props, bytes(*body));
            rc != AMQP_STATUS_OK)
          return guard.open = false, std::string("publishing an answer: ") + amqp_error_string2(rc);
        if (int rc = amqp_basic_ack(conn, channel, a.to.tag, 0); rc != AMQP_STATUS_OK)
          return guard.open = false, std::string("basic.ack: ") + amqp_error_string2(rc);
        deliveries.erase(it);
      }
      for (auto& d : req) {
        if (d.connection != connection || !deliveries.erase(d.tag))
          continue;
        if (int rc = amqp_basic_nack(conn, channel, d.tag, 0, 1); rc != AMQP_STATUS_OK)
          return guard.open = false, std::string("basic.nack: ") + amqp_error_string2(rc);
      }
      for (auto& f : fwd) {
        if (!declare(conn, f.k, declared, why)) {
          give(reply{f.caller, busy(f.k, why)});
          return guard.open = false, why;
        }
        const std::string corr = std::to_string(++next_correlation);
        forward::request_frame rf{new_request_id(rng), f.k, reply_queue, corr, std::move(f.what)};
        const std::string body = forward::encode(rf);
        const std::string expiration = std::to_string(config.timeout.count());
        amqp_basic_properties_t props{};
        props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                       AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG |
                       AMQP_BASIC_MESSAGE_ID_FLAG;
        props.delivery_mode = 2;  // persistent
        props.correlation_id = bytes(corr);
        props.reply_to = bytes(reply_queue);
        props.expiration = bytes(expiration);  // not run after the origin gave up
        props.message_id = bytes(rf.request_id);
        if (int rc = amqp_basic_publish(conn, channel, amqp_empty_bytes,
                                        bytes(partition_queue(f.k)), 0, 0, &props, bytes(body));
            rc != AMQP_STATUS_OK) {
          give(reply{f.caller, busy(f.k, amqp_error_string2(rc))});
          return guard.open = false, std::string("publishing a request: ") + amqp_error_string2(rc);
        }
        pending.emplace(corr,
                        waiting{std::move(f.caller),
                                std::chrono::steady_clock::now() +
                                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                        config.timeout)});
      }
      if (stopping)
        break;
      // 2. timeouts
      auto now = std::chrono::steady_clock::now();
      auto next = now + std::chrono::milliseconds(500);
      for (auto it = pending.begin(); it != pending.end();) {
        if (it->second.deadline <= now) {
          give(reply{it->second.caller,
                     make_error(errc::server_busy,
                                "the partition's owner did not answer the forwarded request "
                                "within " +
                                    std::to_string(config.timeout.count()) + " ms; retry")});
          it = pending.erase(it);
        } else {
          next = std::min(next, it->second.deadline);
          ++it;
        }
      }
      // 3. wait for the socket or the engine
      amqp_maybe_release_buffers(conn);
      if (!amqp_frames_enqueued(conn) && !amqp_data_in_buffer(conn)) {
        pollfd p[2] = {{amqp_get_sockfd(conn), POLLIN, 0}, {wake_fd, POLLIN, 0}};
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
        (void)::poll(p, 2, static_cast<int>(std::clamp<long long>(ms, 0, 500)));
        if (p[1].revents & POLLIN) {
          std::uint64_t v;
          (void)!::read(wake_fd, &v, sizeof v);
        }
        if (!(p[0].revents & (POLLIN | POLLERR | POLLHUP)))
          continue;
      }
      // 4. what arrived
      for (int n = 0; n < 256; ++n) {
        amqp_envelope_t env;
        timeval zero{0, 0};
        const amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &zero, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
          break;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
          amqp_frame_t frame;
          if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK)
            return guard.open = false, std::string("reading a frame");
          if (frame.frame_type == AMQP_FRAME_METHOD) {
            if (frame.payload.method.id == AMQP_BASIC_CANCEL_METHOD) {
              const auto* c = static_cast<amqp_basic_cancel_t*>(frame.payload.method.decoded);
              spdlog::warn("forward: the broker cancelled consumer {}", view(c->consumer_tag));
              std::lock_guard<std::mutex> g(m);
              served_changed = true;
              for (auto k : consuming)
                if ("p" + std::to_string(k) == view(c->consumer_tag)) {
                  consuming.erase(k);
                  break;
                }
            } else if (frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                       frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
              guard.open = false;
              return "the broker closed the channel";
            }
          }
          continue;
        }
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
          guard.open = false;
          return describe(r, "consuming");
        }
        const bool ok = on_delivery(env);
        const std::uint64_t tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (!ok) {  // undecodable: dropped, never redelivered
          if (int rc = amqp_basic_reject(conn, channel, tag, 0); rc != AMQP_STATUS_OK)
            return guard.open = false, std::string("basic.reject: ") + amqp_error_string2(rc);
        }
      }
    }
    return {};
  }

  /// False: a request that cannot be decoded (to reject).
  bool on_delivery(const amqp_envelope_t& env) {
    const std::string_view consumer = view(env.consumer_tag);
    const std::string_view body = view(env.message.body);
    if (consumer == reply_consumer) {
      auto a = forward::decode_answer(body);
      if (!a) {
        spdlog::warn("forward: dropped an answer: {}", a.error().message);
        return true;
      }
      auto it = pending.find(a->correlation);
      if (it == pending.end())
        return true;  // answered already (timed out)
      give(reply{std::move(it->second.caller), std::move(a->what)});
      pending.erase(it);
      return true;
    }
    auto f = forward::decode_request(body);
    if (!f) {
      spdlog::warn("forward: rejected a request on {}: {}", view(env.routing_key),
                   f.error().message);
      return false;
    }
    delivery_ref ref{connection, env.delivery_tag, f->partition, f->request_id};
    deliveries[env.delivery_tag] = held{f->reply_queue, f->correlation, f->request_id};
    sink(inbound{reply_to{id, delivery_address(ref)}, forward::to_request(std::move(f->what))});
    return true;
  }
};

forward_door::forward_door(forward_config c) : impl_(std::make_unique<impl>()) {
  impl_->config = std::move(c);
}

forward_door::~forward_door() {
  stop();
}

result<void> forward_door::start(door_id id, request_sink sink, std::stop_token) {
  if (impl_->thread.joinable())
    return make_error(errc::argument_invalid, "the forwarding door is already started");
  impl_->id = id;
  impl_->sink = std::move(sink);
  impl_->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl_->wake_fd < 0)
    return make_error(errc::server_error, "forward: eventfd failed");
  impl_->thread = std::jthread([this](std::stop_token st) { impl_->run(std::move(st)); });
  return {};
}

time_point forward_door::poll(time_point) {
  return time_point::max();
}

void forward_door::release(std::span<const outbound> items) {
  {
    std::lock_guard<std::mutex> g(impl_->m);
    for (const auto& o : items) {
      const auto* r = std::get_if<reply>(&o);
      if (!r)
        continue;
      auto ref = parse_delivery_address(r->to.address);
      if (!ref)
        continue;
      impl_->to_answer.push_back({std::move(*ref), r->what});
    }
  }
  impl_->wake();
}

void forward_door::stop() {
  if (impl_->thread.joinable()) {
    impl_->thread.request_stop();
    impl_->wake();
    impl_->thread.join();
  }
  if (impl_->wake_fd >= 0) {
    ::close(impl_->wake_fd);
    impl_->wake_fd = -1;
  }
}

void forward_door::forward(std::uint32_t k, reply_to caller, forward::forwarded_request what) {
  {
    std::lock_guard<std::mutex> g(impl_->m);
    impl_->to_forward.push_back({k, std::move(caller), std::move(what)});
  }
  impl_->wake();
}

void forward_door::serve(std::uint32_t k) {
  {
    std::lock_guard<std::mutex> g(impl_->m);
    impl_->served_changed = impl_->served.insert(k).second || impl_->served_changed;
  }
  impl_->wake();
}

void forward_door::unserve(std::uint32_t k) {
  {
    std::lock_guard<std::mutex> g(impl_->m);
    impl_->served_changed = impl_->served.erase(k) > 0 || impl_->served_changed;
  }
  impl_->wake();
}

void forward_door::requeue(const std::string& address) {
  auto ref = parse_delivery_address(address);
  if (!ref)
    return;
  {
    std::lock_guard<std::mutex> g(impl_->m);
    impl_->to_requeue.push_back(std::move(*ref));
  }
  impl_->wake();
}

std::vector<reply> forward_door::take_answers() {
  std::lock_guard<std::mutex> g(impl_->m);
  return std::exchange(impl_->answers, {});
}

door_id forward_door::door() const {
  return impl_->id;
}

}  // namespace devicebound::hubd
