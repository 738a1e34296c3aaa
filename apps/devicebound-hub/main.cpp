// devicebound-hub: the hub as a process behind its front doors (today MQTT,
// through a broker and its plugin).
//
// One thread owns the sans-I/O engine (`devicebound::hub`) and the router. The
// doors' own threads only decode what arrives into typed requests and queue
// them; the engine loop takes everything queued at once with `now` from the
// real clock, applies it, ticks the hub at `hub.next_deadline()`, and hands each
// door its replies and pushes to encode.
//
// The hub's state lives in a SQLite store (include/devicebound/store/sqlite.hpp;
// `--in-memory` keeps it in this process only), so neither a broker restart nor
// a restart of the daemon loses what the hub has accepted. The operations of one
// batch share one store transaction (grouped commits); everything the batch
// produces (replies, deliveries, feedback) is held until that transaction
// committed, so an acknowledgement always follows the commit. A failed commit
// ends the daemon (exit code 4) for its supervisor to restart it from the store.
// The topics are described in docs/protocol.md; running it in
// docs/mqtt-quickstart.md; durability in docs/architecture.md.
#include <fcntl.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/hub.hpp>
#include <devicebound/registry.hpp>
#include <devicebound/store/sqlite.hpp>
#include <devicebound/validate.hpp>
#include <devicebound/version.hpp>
#include <filesystem>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>

#ifdef DEVICEBOUND_WITH_AMQP_DOOR
#include "amqp_door.hpp"
#include "auth_file.hpp"
#endif
#ifdef DEVICEBOUND_WITH_CLUSTER
#include "cluster_engine.hpp"
#endif
#include "config.hpp"
#include "engine_loop.hpp"
#ifdef DEVICEBOUND_WITH_HTTPS_DOOR
#include "https_door.hpp"
#endif
#include "identity_view.hpp"
#include "mqtt_door.hpp"
#include "router.hpp"
#ifdef DEVICEBOUND_WITH_RABBIT_EVENTS
#include "rabbit_events.hpp"
#endif
#ifdef DEVICEBOUND_WITH_FORWARD
#include "forward.hpp"
#include "rabbit_events.hpp"
#endif
#ifdef DEVICEBOUND_WITH_RABBIT_AUTH
#include "rabbit_auth_listener.hpp"
#endif

namespace {

using namespace devicebound;
using namespace devicebound::hubd;

std::optional<spdlog::level::level_enum> parse_level(const std::string& s) {
  const auto l = spdlog::level::from_str(s);
  if (l == spdlog::level::off && s != "off")
    return std::nullopt;
  return l;
}

spdlog::level::level_enum spdlog_level(log_level l) {
  switch (l) {
    case log_level::trace:
      return spdlog::level::trace;
    case log_level::debug:
      return spdlog::level::debug;
    case log_level::info:
      return spdlog::level::info;
    case log_level::warn:
      return spdlog::level::warn;
    case log_level::error:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

void log_stats(const hub& h) {
  const auto& s = h.stats();
  spdlog::info(
      "stats: accepted {}, completed {}, rejected {}, expired {}, delivery count exceeded {}, "
      "purged {}, feedback records {}, feedback batches {}",
      s.accepted, s.completed, s.rejected, s.expired, s.delivery_count_exceeded, s.purged,
      s.feedback_records, s.feedback_batches);
}

/// The engine's connection checkpoints only when the WAL reaches this many
/// pages (a backstop: normally `wal_keeper` has copied all but the last ~100 ms).
/// SQLite's own default, 1000 pages (~4 MB), put a checkpoint with two fsyncs on
/// the engine thread every ~100 ms under load.
constexpr std::uint32_t engine_checkpoint_pages = 10000;

/// Keeps checkpoints and WAL fsyncs off the engine thread (docs/architecture.md,
/// "Durability of the daemon"). Every `interval` it runs a PASSIVE checkpoint on
/// its own connection: SQLite fsyncs the WAL, copies its new pages into the
/// database and fsyncs that, without blocking the engine's writes or any reader.
/// Under `--store-sync normal` (the default) that fsync is what bounds a power
/// cut's loss to about the last interval; when the checkpoint could not copy
/// everything (a reader holds an old snapshot, or it failed), the WAL is
/// fdatasynced directly. A crash of the daemon alone (kill -9) loses nothing
/// acknowledged either way: the OS has the bytes. The engine's connection
/// checkpoints too, but only past `engine_checkpoint_pages`: SQLite restarts
/// the WAL from its start only at a write that finds it wholly copied back, which
/// under sustained load only the writer's own checkpoint guarantees.
class wal_keeper {
 public:
  wal_keeper(std::string db_path, sqlite_sync sync, duration interval)
      : thread_([path = std::move(db_path), sync, interval](std::stop_token stop) {
          sqlite3* db = nullptr;
          int fd = -1;
          bool warned = false;
          std::mutex m;
          std::unique_lock<std::mutex> g(m);
          std::condition_variable_any cv;
          for (;;) {
            (void)cv.wait_for(g, stop, interval, [] { return false; });
            if (stop.stop_requested())
              break;
            if (!db) {
              if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                                  nullptr) != SQLITE_OK ||
                  sqlite3_exec(db,
                               sync == sqlite_sync::full ? "PRAGMA synchronous=FULL"
                                                         : "PRAGMA synchronous=NORMAL",
                               nullptr, nullptr, nullptr) != SQLITE_OK) {
                if (!warned)
                  spdlog::warn("the checkpointer cannot open the store {}: {}", path,
                               db ? sqlite3_errmsg(db) : "out of memory");
                warned = true;
                sqlite3_close_v2(db);
                db = nullptr;
              }
            }
            int wal_pages = -1;
            int copied = -1;
            const int rc = db ? sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE,
                                                          &wal_pages, &copied)
                              : SQLITE_ERROR;
            if (rc != SQLITE_OK && rc != SQLITE_BUSY && !warned) {
              spdlog::warn("checkpoint of the store {} failed: {}", path, sqlite3_errmsg(db));
              warned = true;
            }
            if (sync != sqlite_sync::normal || (rc == SQLITE_OK && wal_pages == copied))
              continue;  // FULL fsyncs each commit; a complete checkpoint synced the WAL
            if (fd < 0)
              fd = ::open((path + "-wal").c_str(), O_RDONLY | O_CLOEXEC);
            if (fd >= 0 && ::fdatasync(fd) != 0)
              spdlog::warn("fdatasync of the store's WAL {}-wal failed", path);
          }
          if (fd >= 0)
            ::close(fd);
          sqlite3_close_v2(db);
        }) {}

 private:
  std::jthread thread_;
};

/// Loads the registry from the store and reads `--auth-file` as the seed of
/// what the registry lacks; an exit code on failure.
int open_registry(const daemon_config& cfg, sqlite_store* store, registry& identities,
                  identity_seed& seed) {
  if (store) {
    auto snap = store->load_identities();
    if (!snap) {
      spdlog::critical("cannot read the identity registry from the store: {} [{}]",
                       snap.error().message, snap.error().numeric());
      return exit_store_open;
    }
    if (auto r = identities.restore(snap->identities, snap->policies); !r) {
      spdlog::critical("the store's identity registry is unusable: {}", r.error().message);
      return exit_store_open;
    }
  }
  if (cfg.amqp.auth_file.empty())
    return exit_ok;  // test mode: no policies, devices get generated keys
#ifndef DEVICEBOUND_WITH_AMQP_DOOR
  spdlog::critical("--auth-file: this devicebound-hub was built without SAS authentication");
  return exit_config;
#else
  auto a = load_auth_file(cfg.amqp.auth_file);
  if (!a) {
    spdlog::critical("bad --auth-file: {}", a.error().message);
    return exit_config;
  }
  spdlog::info(
      "auth file {}: {} device key(s), {} policy(ies) (a seed: the registry keeps what it has)",
      cfg.amqp.auth_file, a->devices.size(), a->policies.size());
  seed.policies = a->policies;
  seed.default_policies = true;
  for (const auto& [id, keys] : a->devices)
    seed.devices.push_back({id, keys.primary_key, keys.secondary_key});
  return exit_ok;
#endif
}

/// Seeds the registry, registers the --device flags and publishes every
/// identity to the doors' view, in one committed batch before the doors start.
int seed_registry(router& rt, const identity_seed& seed, const std::vector<std::string>& devices) {
  const time_point now = system_clock{}.now();
  auto fail = [](const error& e) {
    spdlog::critical("cannot seed the identity registry: {} [{}]", e.message, e.numeric());
    return exit_store_failed;
  };
  if (auto r = rt.begin_batch(); !r)
    return fail(r.error());
  rt.seed_identities(seed, now);
  rt.register_configured(devices, now);
  if (auto r = rt.end_batch(); !r)
    return fail(r.error());
  return exit_ok;
}

/// Opens the store and the hub on it (or an in-memory hub); an exit code on failure.
int open_hub(daemon_config& cfg, std::unique_ptr<sqlite_store>& store, hub& h) {
  if (cfg.store.in_memory) {
    h = hub(cfg.hub);
    return exit_ok;
  }
  // The store: opened (created, with its schema, when new) before anything else
  // runs. A store this build cannot use is never replaced by an empty one.
  if (cfg.store.path.empty()) {
    cfg.store.path = default_store_path(cfg.broker.client_id);
    std::error_code ec;
    const auto dir = std::filesystem::path(cfg.store.path).parent_path();
    // A directory made here holds keys (the registry is in the store): 0700.
    if (!dir.empty() && std::filesystem::create_directories(dir, ec) && !ec)
      std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                                   std::filesystem::perm_options::replace, ec);
    if (ec) {
      spdlog::critical("cannot create the store's directory {}: {} (choose a file with --store)",
                       dir.string(), ec.message());
      return exit_store_open;
    }
  }
  sqlite_options so;
  so.sync = cfg.store.sync;
  if (so.sync != sqlite_sync::off)
    so.checkpoint_pages = engine_checkpoint_pages;  // wal_keeper does the rest
  auto s = sqlite_store::open(cfg.store.path, so);
  if (!s) {
    spdlog::critical("cannot open the store: {} [{}]; refusing to start (exit code {})",
                     s.error().message, s.error().numeric(), static_cast<int>(exit_store_open));
    return exit_store_open;
  }
  store = std::make_unique<sqlite_store>(std::move(*s));
  auto opened = hub::open(cfg.hub, *store, system_token_source());
  if (!opened) {
    spdlog::critical(
        "cannot open the hub from the store '{}': {} [{}]; refusing to start (exit "
        "code {})",
        cfg.store.path, opened.error().message, opened.error().numeric(),
        static_cast<int>(exit_store_open));
    return exit_store_open;
  }
  h = std::move(*opened);
  return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
  // Signals go to one thread (below), never to the doors' threads or the engine loop.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto loaded = load_config(argc, argv);
  if (const int* code = std::get_if<int>(&loaded))
    return *code;
  daemon_config cfg = std::move(std::get<daemon_config>(loaded));

  const auto level = parse_level(cfg.log_level);
  if (!level) {
    std::fprintf(stderr, "devicebound-hub: unknown log level '%s'\n", cfg.log_level.c_str());
    return exit_config;
  }
  spdlog::set_level(*level);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ %v");
  if (auto v = cfg.hub.validate(); !v) {
    spdlog::critical("bad configuration: {}", v.error().message);
    return exit_config;
  }
  if (auto v = validate_device_id(cfg.broker.client_id); !v) {
    spdlog::critical("bad client id: {}", v.error().message);
    return exit_config;
  }
  if (cfg.max_in_flight < 1) {
    spdlog::critical("bad configuration: max_in_flight must be at least 1");
    return exit_config;
  }
  // The broker seam (docs/architecture.md, "The broker seam").
  const auto kind = parse_broker_kind(cfg.broker_kind);
  if (!kind) {
    spdlog::critical("bad configuration: {}", kind.error().message);
    return exit_config;
  }
  if (*kind == broker_kind::mosquitto && !cfg.rabbit_amqp_url.empty()) {
    spdlog::critical("bad configuration: --rabbit-amqp-url needs --broker rabbitmq");
    return exit_config;
  }
  std::unique_ptr<broker_events> events;
  if (*kind == broker_kind::rabbitmq) {
#ifdef DEVICEBOUND_WITH_RABBIT_EVENTS
    if (cfg.rabbit_amqp_url.empty()) {
      spdlog::critical(
          "bad configuration: --broker rabbitmq needs --rabbit-amqp-url "
          "amqp://USER:PASSWORD@HOST:PORT/ (the presence and delivery events)");
      return exit_config;
    }
    auto url = rabbit::parse_amqp_url(cfg.rabbit_amqp_url);
    if (!url) {
      spdlog::critical("bad configuration: {}", url.error().message);
      return exit_config;
    }
    if (auto c = check_device_id_for(*kind, cfg.broker.client_id); !c) {
      spdlog::critical("bad client id: {}", c.error().message);
      return exit_config;
    }
    events = std::make_unique<rabbit_events>(
        rabbit_events_config{std::move(*url), cfg.broker.client_id, std::chrono::seconds(1)});
#else
    spdlog::critical(
        "--broker rabbitmq: this devicebound-hub was built without the RabbitMQ event consumer "
        "(rabbitmq-c: librabbitmq-dev; and OpenSSL for the auth backend)");
    return exit_config;
#endif
  }

#ifdef DEVICEBOUND_WITH_FORWARD
  // checked before anything connects: a bad flag is a bad flag
  std::optional<rabbit::amqp_url> forward_url;
  if (cfg.cluster.enabled && !cfg.cluster.forward_amqp_url.empty()) {
    auto url = rabbit::parse_amqp_url(cfg.cluster.forward_amqp_url);
    if (!url) {
      std::string m = url.error().message;
      if (m.starts_with("--rabbit-amqp-url"))
        m.replace(0, 17, "--forward-amqp-url");
      spdlog::critical("bad configuration: {}", m);
      return exit_config;
    }
    forward_url = std::move(*url);
  }
#else
  if (!cfg.cluster.forward_amqp_url.empty()) {
    spdlog::critical(
        "--forward-amqp-url: this devicebound-hub was built without request forwarding "
        "(rabbitmq-c: librabbitmq-dev)");
    return exit_config;
  }
#endif
  std::unique_ptr<sqlite_store> store;  // before the hub: the hub commits to it
  hub h;
#ifndef DEVICEBOUND_WITH_CLUSTER
  if (cfg.cluster.enabled) {
    spdlog::critical("--cluster: this devicebound-hub was built without PostgreSQL (libpq)");
    return exit_config;
  }
#endif
  // --cluster: no hub here; each owned partition opens its own (cluster_engine.hpp)
  if (!cfg.cluster.enabled)
    if (const int code = open_hub(cfg, store, h); code != exit_ok)
      return code;

  // The identity registry (docs/registry.md): loaded from the store; what it
  // lacks is seeded from --auth-file (or IoT Hub's default policies) below.
  registry identities;
  identity_view view(!cfg.amqp.auth_file.empty());
  identity_seed seed;
  if (const int code = open_registry(cfg, store.get(), identities, seed); code != exit_ok)
    return code;

  // Ids the broker cannot carry are refused: at start (the auth file, --device), and
  // by the router at every registration.
  for (const auto& id : cfg.devices)
    if (auto c = check_device_id_for(*kind, id); !c) {
      spdlog::critical("--device: {}", c.error().message);
      return exit_config;
    }
  for (const auto& d : seed.devices)
    if (auto c = check_device_id_for(*kind, d.id); !c) {
      spdlog::critical("--auth-file: {}", c.error().message);
      return exit_config;
    }

  router_options ro;
  if (*kind != broker_kind::mosquitto)
    ro.check_new_device_id = [k = *kind](std::string_view id) {
      return check_device_id_for(k, id);
    };
  ro.identities = &identities;
  ro.view = &view;
  ro.new_key = keys_from(system_token_source());
  if (store)
    ro.commit_identities = [s = store.get()](const journal::change_set& c) {
      return s->apply(c);
    };
  ro.max_in_flight = cfg.max_in_flight;
  ro.throttle = cfg.limits.throttle;
  ro.auto_register = cfg.auto_register;
  ro.log = [](log_level l, std::string_view line) {
    spdlog::log(spdlog_level(l), "{}", line);
  };
  ro.log_enabled = [](log_level l) {
    return spdlog::should_log(spdlog_level(l));
  };
  commit_group group;
  if (store) {
    group.begin = [s = store.get()] {
      return s->begin_group();
    };
    group.commit = [s = store.get()] {
      return s->commit_group();
    };
  }
#ifdef DEVICEBOUND_WITH_CLUSTER
  std::unique_ptr<cluster_engine> cluster;
  if (cfg.cluster.enabled) {
    auto c = cluster_engine::create(cfg, ro, seed);
    if (!c) {
      spdlog::critical("cannot join the cluster: {} [{}]", c.error().message, c.error().numeric());
      return c.error().code == errc::argument_invalid ? exit_config : exit_store_open;
    }
    cluster = std::move(*c);
  }
#endif
  router rt(h, std::move(ro), std::move(group));
  if (!cfg.cluster.enabled)
    if (const int code = seed_registry(rt, seed, cfg.devices); code != exit_ok)
      return code;
  std::optional<wal_keeper> keeper;
  if (store && cfg.store.sync != sqlite_sync::off)
    keeper.emplace(store->path(), cfg.store.sync, std::chrono::milliseconds(100));
  if (cfg.broker_sas_key) {
    // A token for the hub's host, signed with the policy's key, fresh at each connect.
    cfg.broker.password_source = [key = *auth::shared_access_key::from_base64(*cfg.broker_sas_key),
                                  policy = *cfg.broker.username, host = cfg.amqp.iothub_hostname] {
      const auto expiry =
          auth::sas_expiry(devicebound::system_clock{}.now(), std::chrono::hours(1));
      return auth::to_string(auth::generate_sas_token(host, key, expiry, policy));
    };
  }
  mqtt_door mqtt(cfg.broker, cfg.reconnect, broker_dialect::of(*kind), std::move(events));
  std::vector<front_door*> doors{&mqtt};
#ifdef DEVICEBOUND_WITH_AMQP_DOOR
  std::unique_ptr<amqp_door> amqp;
  if (!cfg.amqp.listen.empty()) {
    amqp_door_config ac;
    ac.listen = cfg.amqp.listen;
    ac.tls_server_cert = cfg.amqp.tls_server_cert;
    ac.tls_server_key = cfg.amqp.tls_server_key;
    ac.tls_key_password = cfg.amqp.tls_server_key_password;
    ac.insecure = cfg.amqp.insecure;
    ac.iothub_hostname = cfg.amqp.iothub_hostname;
    ac.identities = &view;
    ac.max_connections = cfg.limits.amqp_max_connections;
    ac.max_sessions = cfg.limits.amqp_max_sessions;
    ac.max_links = cfg.limits.amqp_max_links;
    ac.max_frame_size = cfg.limits.amqp_max_frame_size;
    ac.open_timeout = std::chrono::seconds(cfg.limits.amqp_open_timeout_seconds);
    ac.max_message_size = cfg.limits.amqp_max_message_size;
    amqp = std::make_unique<amqp_door>(std::move(ac));
    doors.push_back(amqp.get());
  }
#else
  if (!cfg.amqp.listen.empty()) {
    spdlog::critical("--amqp-listen: this devicebound-hub was built without AMQP (Qpid Proton)");
    return exit_config;
  }
#endif
#ifdef DEVICEBOUND_WITH_HTTPS_DOOR
  // The HTTPS door (docs/https.md): tokens checked against the registry's view.
  std::unique_ptr<https_door> https;
  if (!cfg.https.listen.empty()) {
    https_door_config hc;
    hc.listen = cfg.https.listen;
    hc.tls_server_cert = cfg.amqp.tls_server_cert;
    hc.tls_server_key = cfg.amqp.tls_server_key;
    hc.tls_key_password = cfg.amqp.tls_server_key_password;
    hc.insecure = cfg.https.insecure;
    hc.iothub_hostname = cfg.amqp.iothub_hostname;
    hc.identities = &view;
    hc.request_timeout = std::chrono::seconds(cfg.https.request_timeout_seconds);
    hc.idle_timeout = std::chrono::seconds(cfg.limits.https_idle_timeout_seconds);
    hc.max_connections = cfg.limits.https_max_connections;
    hc.max_header_bytes = cfg.limits.https_max_header_bytes;
    hc.max_body_bytes = static_cast<std::size_t>(cfg.limits.https_max_body_bytes);
    https = std::make_unique<https_door>(std::move(hc));
    doors.push_back(https.get());
  }
#else
  if (!cfg.https.listen.empty()) {
    spdlog::critical("--https-listen: this devicebound-hub was built without HTTPS (OpenSSL)");
    return exit_config;
  }
#endif
#ifdef DEVICEBOUND_WITH_RABBIT_AUTH
  // RabbitMQ's HTTP auth backend (docs/scale-out.md): tokens checked against the view.
  std::unique_ptr<rabbit_auth_listener> rabbit_auth;
  if (!cfg.rabbit_auth_listen.empty()) {
    rabbit_auth_listener_config rc;
    rc.listen = cfg.rabbit_auth_listen;
    rc.settings.hub_host = cfg.amqp.iothub_hostname;
    rc.identities = &view;
    auto started = rabbit_auth_listener::start(std::move(rc));
    if (!started) {
      spdlog::critical("{}", started.error().message);
      return exit_config;
    }
    rabbit_auth = std::move(*started);
  }
#else
  if (!cfg.rabbit_auth_listen.empty()) {
    spdlog::critical("--rabbit-auth-listen: this devicebound-hub was built without it (OpenSSL)");
    return exit_config;
  }
#endif
#ifdef DEVICEBOUND_WITH_FORWARD
  // --cluster: requests for partitions served elsewhere go to their owner through
  // RabbitMQ (forward.hpp; docs/scale-out.md, "Forwarding requests")
  std::unique_ptr<forward_door> forwarder;
  if (cluster) {
    if (const rabbit::amqp_url* url = forward_url ? &*forward_url : nullptr) {
      forward_config fc;
      fc.host = url->host;
      fc.port = url->port;
      fc.user = url->user;
      fc.password = url->password;
      fc.timeout = cfg.cluster.forward_timeout;
      fc.instance = cfg.cluster.instance;
      forwarder = std::make_unique<forward_door>(std::move(fc));
      doors.push_back(forwarder.get());
      cluster->set_forwarding(forwarder.get(), door_id{0});  // the MQTT door is door 0
      spdlog::info("cluster: forwarding requests through RabbitMQ at {}:{} (timeout {} ms)",
                   url->host, url->port, cfg.cluster.forward_timeout.count());
    } else {
      cluster->set_forwarding(nullptr, door_id{0});
    }
  }
#else
#ifdef DEVICEBOUND_WITH_CLUSTER
  if (cluster)
    cluster->set_forwarding(nullptr, door_id{0});  // the MQTT door is door 0
#endif
#endif
  router_target single(rt);
  batch_target* target = &single;
#ifdef DEVICEBOUND_WITH_CLUSTER
  if (cluster)
    target = cluster.get();
#endif
  engine_loop loop(*target, doors);

  spdlog::info(
      "devicebound-hub {} '{}': broker {} {}://{}:{}, client id '{}', lock {} ms, default TTL {} "
      "ms, max delivery count {}, queue depth {}, {} in flight per device, auto-register {}",
      devicebound::version, cfg.hub.name, to_string(*kind), cfg.broker.tls ? "ssl" : "tcp",
      cfg.broker.host, cfg.broker.port, cfg.broker.client_id, cfg.hub.lock_duration.count(),
      cfg.hub.default_ttl.count(), cfg.hub.max_delivery_count, cfg.hub.max_queue_depth,
      cfg.max_in_flight, cfg.auto_register ? "on" : "off");
  if (cfg.limits.throttle.tier != throttle_tier::off) {
    const auto r = rates_of(cfg.limits.throttle.tier);
    const std::uint32_t units =
        cfg.limits.throttle.tier == throttle_tier::free ? 1 : cfg.limits.throttle.units;
    spdlog::info("C2D throttle {} x {} unit(s): {} sends and {} HTTPS receives a minute",
                 to_string(cfg.limits.throttle.tier), units, r.sends_per_minute * units,
                 r.receives_per_minute * units);
  }
  if (cfg.cluster.enabled)
    spdlog::info(
        "cluster: {} partitions on PostgreSQL (schema '{}'), lease ttl {} ms, renewed every {} ms",
        cfg.cluster.partitions, cfg.cluster.schema, cfg.cluster.lease_ttl.count(),
        cfg.cluster.lease_renew.count());
  else if (store)
    spdlog::info(
        "store '{}' (SQLite, synchronous {}): {} device(s), {} feedback batch(es) queued, {} "
        "message(s) accepted so far",
        store->path(), setting_name(cfg.store.sync), h.device_count(), h.feedback_queue_depth(),
        h.stats().accepted);
  else
    spdlog::warn("no store (--in-memory): the queues are lost when the daemon stops");

  std::thread signal_thread([&] {
    int sig = 0;
    if (sigwait(&signals, &sig) == 0) {
      spdlog::info("received {}", sig == SIGINT ? "SIGINT" : "SIGTERM");
      loop.stop();
    }
  });
  const loop_end end = loop.run(cfg.devices);
  int code = exit_ok;
  switch (end.why) {
    case loop_end::cause::stopped:
      spdlog::info("stopping");
      break;
    case loop_end::cause::door_failed:
      code = exit_broker;
      break;
    case loop_end::cause::store_failed:
      // The hub's memory may be ahead of its file. Stop serving (nothing more is
      // published) and exit for the supervisor to restart the daemon, which
      // reopens the hub from the store (every acknowledged operation is there).
      spdlog::critical(
          "the store failed: {}; stopping (exit code {}): restart devicebound-hub to reopen the "
          "hub from its store, which holds every acknowledged operation",
          end.detail ? end.detail->message : std::string("unknown error"),
          static_cast<int>(exit_store_failed));
      code = exit_store_failed;
      break;
  }
  mqtt.stop();
#ifdef DEVICEBOUND_WITH_AMQP_DOOR
  if (amqp)
    amqp->stop();
#endif
#ifdef DEVICEBOUND_WITH_HTTPS_DOOR
  if (https)
    https->stop();
#endif
#ifdef DEVICEBOUND_WITH_RABBIT_AUTH
  if (rabbit_auth)
    rabbit_auth->stop();
#endif
#ifdef DEVICEBOUND_WITH_FORWARD
  if (forwarder)
    forwarder->stop();  // what it holds unanswered goes back to its queues
#endif
#ifdef DEVICEBOUND_WITH_CLUSTER
  if (cluster)
    cluster->shutdown();  // every batch is committed and released: give the leases up
#endif
  if (end.why != loop_end::cause::door_failed && !cfg.cluster.enabled)
    log_stats(h);
  // Wake the signal thread if run() ended for another reason.
  loop.stop();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  return code;
}
