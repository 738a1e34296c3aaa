/// \file registry.hpp
/// The identity registry (SPEC 12): the devices a hub knows by their keys and
/// the hub's shared access policies. One registry serves every front door.
///
/// Sans-I/O like the engine: no I/O, no thread, no clock (every change takes
/// `now`), no random source (new keys come from the caller's `key_source`).
/// Each change appends journal records (journal.hpp: `identity_put`,
/// `identity_removed`, `policy_put`, `policy_removed`) that the caller takes
/// with `take_changes()` and commits to the hub's store; `restore` rebuilds a
/// registry from a store's snapshot. An operation that fails returns a typed
/// error and changes nothing, records included.
///
/// The rules of a PUT (SPEC 12.2; our choices where SPEC says unconfirmed, see
/// docs/registry.md): no `If-Match` creates and refuses an existing device
/// (409 DeviceAlreadyExists); `If-Match` `*` or the current etag updates;
/// `If-Match` on a missing device or a stale etag is 412 PreconditionFailed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "auth/base64.hpp"
#include "auth/policy.hpp"
#include "auth/shared_access_key.hpp"
#include "device_id.hpp"
#include "errors.hpp"
#include "identity.hpp"
#include "journal.hpp"
#include "message.hpp"
#include "token_source.hpp"

namespace devicebound {

/// Makes a new random key (32 bytes: SPEC 12.2.3 and our choice). Injected, so
/// the registry never reads a random source itself.
using key_source = std::function<auth::shared_access_key()>;

/// A key source over a token source: two random lock tokens make 32 bytes.
inline key_source keys_from(token_source tokens) {
  return [tokens = std::move(tokens)] {
    std::string bytes;
    bytes.reserve(32);
    for (int i = 0; i < 2; ++i) {
      const auto t = tokens();
      bytes.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
    }
    return auth::shared_access_key::from_bytes(std::move(bytes));
  };
}

/// Where a created device gets its generation id: the hub's `add_device` (the
/// router registers the device in the engine in the same batch), or a fixed one.
/// An error refuses the PUT, and the registry stays as it was.
using generation_source = std::function<result<std::string>(std::string_view device_id)>;

/// What a PUT did.
struct put_result {
  device_identity device;  ///< as stored now
  bool created = false;
};

class registry {
 public:
  /// Keys: base64 of this many bytes (our rule: SPEC 12.2.3 leaves it open).
  static constexpr std::size_t min_key_bytes = 16;
  static constexpr std::size_t max_key_bytes = 64;
  /// Keys the registry generates.
  static constexpr std::size_t generated_key_bytes = 32;
  /// `statusReason` limit (IoT Hub documents 128 characters).
  static constexpr std::size_t max_status_reason = 128;
  /// `list` answers at most this many devices (SPEC 12.1.1).
  static constexpr std::uint32_t max_list = 1000;

  registry() = default;
  registry(registry&&) noexcept = default;
  registry& operator=(registry&&) noexcept = default;

  // --- restoring -------------------------------------------------------------------

  /// Rebuilds the registry from what a store loaded. Errors (400005) name a
  /// record that cannot be what a registry wrote; the registry is then empty.
  result<void> restore(const std::vector<device_identity>& identities,
                       const std::vector<auth::shared_access_policy>& policies) {
    devices_.clear();
    policies_.clear();
    pending_.clear();
    for (const auto& d : identities) {
      if (auto r = validate_device_id(d.device_id); !r)
        return bad_restore("identity", r.error());
      if (d.version == 0 || d.generation_id.empty())
        return bad_restore("identity", make_error(errc::malformed, "device '" + d.device_id +
                                                                       "' has no version or "
                                                                       "generation id"));
      if (!devices_.emplace(d.device_id, pack(d)).second)
        return bad_restore("identity", make_error(errc::malformed,
                                                  "device '" + d.device_id + "' is stored twice"));
    }
    for (const auto& p : policies) {
      if (auto r = check_policy(p); !r)
        return bad_restore("policy", r.error());
      if (!policies_.emplace(p.name, p).second)
        return bad_restore("policy",
                           make_error(errc::malformed, "policy '" + p.name + "' is stored twice"));
    }
    return {};
  }

  // --- devices ---------------------------------------------------------------------

  /// Creates or updates a device (SPEC 12.2). `if_match`: the caller's
  /// `If-Match`, quotes stripped (`*` or an etag); nullopt: none. A create asks
  /// `generation` for the device's generation id (last, after every check: an
  /// error from it refuses the PUT). Empty keys of a `sas` device are
  /// generated (create, or a switch to `sas`) or kept (update).
  result<put_result> put(const device_identity_update& u,
                         const std::optional<std::string>& if_match,
                         const generation_source& generation, time_point now,
                         const key_source& new_key) {
    if (auto r = validate_device_id(u.device_id); !r)
      return make_error(errc::argument_invalid, "deviceId: " + r.error().message);
    auto it = devices_.find(u.device_id);
    if (auto r = check_precondition(u.device_id, it, if_match); !r)
      return r.error();
    if (u.status_reason.size() > max_status_reason)
      return make_error(errc::argument_invalid,
                        "statusReason is " + std::to_string(u.status_reason.size()) +
                            " characters long; the limit is " + std::to_string(max_status_reason));
    auto primary = parse_key(u.primary_key, "authentication.symmetricKey.primaryKey");
    if (!primary)
      return primary.error();
    auto secondary = parse_key(u.secondary_key, "authentication.symmetricKey.secondaryKey");
    if (!secondary)
      return secondary.error();
    if (u.auth == auth_type::self_signed) {
      if (u.primary_thumbprint.empty())
        return make_error(errc::argument_invalid,
                          "authentication.x509Thumbprint.primaryThumbprint: a selfSigned device "
                          "needs a thumbprint");
      for (const auto& [t, name] : {std::pair{&u.primary_thumbprint, "primaryThumbprint"},
                                    std::pair{&u.secondary_thumbprint, "secondaryThumbprint"}})
        if (!t->empty() && !is_thumbprint(*t))
          return make_error(errc::argument_invalid, std::string("authentication.x509Thumbprint.") +
                                                        name + ": not 40 or 64 hexadecimal digits");
    }

    device_identity d;
    const bool create = it == devices_.end();
    if (!create)
      d = unpack(*it);
    d.device_id = u.device_id;
    if (create) {
      d.version = 1;
      d.status_updated = now;
    } else {
      ++d.version;
      if (d.status != u.status)
        d.status_updated = now;
    }
    d.status = u.status;
    d.status_reason = u.status_reason;
    d.iot_edge = u.iot_edge;
    const bool was_sas = !create && d.auth == auth_type::sas;
    d.auth = u.auth;
    if (u.auth == auth_type::sas) {
      // given keys replace; empty ones are kept (an update of a sas device) or generated
      auto fill = [&](auth::shared_access_key& key, result<auth::shared_access_key>& given) {
        if (!given->empty())
          key = std::move(*given);
        else if (!was_sas || key.empty())
          key = new_key ? new_key() : auth::shared_access_key{};
      };
      fill(d.primary_key, primary);
      fill(d.secondary_key, secondary);
      if (d.primary_key.empty() || d.secondary_key.empty())
        return make_error(errc::server_error, "the registry has no key source to generate keys");
      d.primary_thumbprint.clear();
      d.secondary_thumbprint.clear();
    } else {
      d.primary_key = {};
      d.secondary_key = {};
      d.primary_thumbprint = u.auth == auth_type::self_signed ? u.primary_thumbprint : "";
      d.secondary_thumbprint = u.auth == auth_type::self_signed ? u.secondary_thumbprint : "";
    }
    if (create) {
      if (!generation)
        return make_error(errc::server_error, "the registry has no generation id source");
      auto g = generation(u.device_id);
      if (!g)
        return g.error();
      if (g->empty())
        return make_error(errc::server_error, "the generation id source gave an empty id");
      d.generation_id = std::move(*g);
      devices_.emplace(d.device_id, pack(d));
    } else {
      it->second = pack(d);
    }
    pending_.push_back(journal::identity_put{d});
    return put_result{std::move(d), create};
  }

  /// Adds a device with generated keys, enabled (a device of the daemon's
  /// configuration or auto-registered). 409 if it exists.
  result<device_identity> add(std::string_view device_id, std::string generation_id, time_point now,
                              const key_source& new_key) {
    device_identity_update u;
    u.device_id = std::string(device_id);
    auto r = put(
        u, std::nullopt, [&](std::string_view) -> result<std::string> { return generation_id; },
        now, new_key);
    if (!r)
      return r.error();
    return std::move(r->device);
  }

  /// Adds a device with the given keys (an `--auth-file` device line). 409 if it exists.
  result<device_identity> add(std::string_view device_id, std::string generation_id,
                              const auth::shared_access_key& primary,
                              const auth::shared_access_key& secondary, time_point now,
                              const key_source& new_key) {
    device_identity_update u;
    u.device_id = std::string(device_id);
    u.primary_key = primary.empty() ? std::string() : primary.to_base64();
    u.secondary_key = secondary.empty() ? std::string() : secondary.to_base64();
    auto r = put(
        u, std::nullopt, [&](std::string_view) -> result<std::string> { return generation_id; },
        now, new_key);
    if (!r)
      return r.error();
    return std::move(r->device);
  }

  /// The device, or 404 DeviceNotFound.
  result<device_identity> get(std::string_view device_id) const {
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    return unpack(*it);
  }
  bool contains(std::string_view device_id) const {
    return devices_.find(device_id) != devices_.end();
  }
  std::size_t size() const noexcept { return devices_.size(); }

  /// At most `top` devices in device id order, starting after `after` (a
  /// page's last id; empty: from the first). `top` 0 or above 1000 is 1000
  /// (SPEC 12.1.1).
  std::vector<device_identity> list(std::uint32_t top = max_list,
                                    std::string_view after = {}) const {
    if (top == 0 || top > max_list)
      top = max_list;
    std::vector<device_identity> out;
    auto it = after.empty() ? devices_.begin() : devices_.upper_bound(after);
    for (; it != devices_.end() && out.size() < top; ++it)
      out.push_back(unpack(*it));
    return out;
  }

  /// Calls `f(device_identity)` for every device, in device id order.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& node : devices_)
      f(unpack(node));
  }

  /// Whether `remove(device_id, if_match)` would succeed; changes nothing.
  /// 404 DeviceNotFound, or 412 PreconditionFailed on a stale etag.
  result<void> check_remove(std::string_view device_id,
                            const std::optional<std::string>& if_match) const {
    auto it = devices_.find(device_id);
    if (it == devices_.end())
      return not_found(device_id);
    if (if_match && *if_match != "*" && *if_match != std::to_string(it->second.version))
      return make_error(errc::precondition_failed,
                        "device '" + std::string(device_id) + "' has etag \"" +
                            std::to_string(it->second.version) + "\", not \"" + *if_match + "\"");
    return {};
  }

  /// Removes a device (`If-Match` none, `*` or its etag).
  result<void> remove(std::string_view device_id, const std::optional<std::string>& if_match) {
    if (auto r = check_remove(device_id, if_match); !r)
      return r;
    auto it = devices_.find(device_id);
    pending_.push_back(journal::identity_removed{it->first});
    devices_.erase(it);
    return {};
  }

  // --- policies --------------------------------------------------------------------

  /// Creates or replaces a policy. Errors (400004) name the field.
  result<void> put_policy(auth::shared_access_policy p) {
    if (auto r = check_policy(p); !r)
      return r;
    pending_.push_back(journal::policy_put{p});
    policies_.insert_or_assign(p.name, std::move(p));
    return {};
  }
  /// The policy, or 404 (errc::device_not_found is IoT Hub's code for a missing entity).
  result<auth::shared_access_policy> get_policy(std::string_view name) const {
    auto it = policies_.find(name);
    if (it == policies_.end())
      return make_error(errc::device_not_found, "no policy '" + std::string(name) + "'");
    return it->second;
  }
  result<void> remove_policy(std::string_view name) {
    auto it = policies_.find(name);
    if (it == policies_.end())
      return make_error(errc::device_not_found, "no policy '" + std::string(name) + "'");
    pending_.push_back(journal::policy_removed{it->first});
    policies_.erase(it);
    return {};
  }
  /// Every policy, by name.
  std::vector<auth::shared_access_policy> policies() const {
    std::vector<auth::shared_access_policy> out;
    out.reserve(policies_.size());
    for (const auto& [name, p] : policies_)
      out.push_back(p);
    return out;
  }
  std::size_t policy_count() const noexcept { return policies_.size(); }

  // --- the journal -----------------------------------------------------------------

  /// The change records of the operations since the last call, in order.
  journal::change_set take_changes() { return std::exchange(pending_, {}); }
  bool has_changes() const noexcept { return !pending_.empty(); }

  /// A device key from its base64 text: empty stays empty; otherwise base64 of
  /// 16..64 bytes. Errors (400004) name `field`.
  static result<auth::shared_access_key> parse_key(std::string_view text, std::string_view field) {
    if (text.empty())
      return auth::shared_access_key{};
    auto k = auth::shared_access_key::from_base64(text);
    if (!k)
      return make_error(errc::argument_invalid, std::string(field) + ": not base64");
    if (k->bytes().size() < min_key_bytes || k->bytes().size() > max_key_bytes)
      return make_error(errc::argument_invalid, std::string(field) +
                                                    ": a key is base64 of 16 to 64 bytes, not " +
                                                    std::to_string(k->bytes().size()));
    return k;
  }

 private:
  /// What a device costs beyond its id and keys (bench/hub_throughput.cpp
  /// measures it): the rarely set fields live behind one pointer, the keys in
  /// one block, a generation id of IoT Hub's form as a number.
  struct extras {
    std::string generation_id;  ///< when not a plain decimal number
    std::string status_reason;
    std::string primary_thumbprint;
    std::string secondary_thumbprint;
  };
  struct entry {
    std::uint64_t version = 1;
    std::uint64_t generation = 0;        ///< 0: in `more`
    std::int64_t status_updated_ms = 0;  ///< time_point ticks
    std::unique_ptr<char[]> keys;        ///< [primary size][secondary size][primary][secondary]
    std::unique_ptr<extras> more;
    device_status status = device_status::enabled;
    auth_type auth = auth_type::sas;
    bool iot_edge = false;
  };
  using device_map = std::map<std::string, entry, std::less<>>;

  static std::uint64_t compact_generation(std::string_view g) {
    if (g.empty() || g.size() > 19 || g[0] == '0')
      return 0;
    std::uint64_t v = 0;
    for (char c : g) {
      if (c < '0' || c > '9')
        return 0;
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return v;
  }

  static entry pack(const device_identity& d) {
    entry e;
    e.version = d.version;
    e.status_updated_ms = d.status_updated.time_since_epoch().count();
    e.status = d.status;
    e.auth = d.auth;
    e.iot_edge = d.iot_edge;
    e.generation = compact_generation(d.generation_id);
    const auto p = d.primary_key.bytes(), s = d.secondary_key.bytes();
    if (!p.empty() || !s.empty()) {
      // keys are at most 64 bytes when they come through `put`; a longer one
      // from elsewhere is cut at 255 bytes, which no SAS key reaches
      const std::size_t pn = std::min<std::size_t>(p.size(), 255),
                        sn = std::min<std::size_t>(s.size(), 255);
      e.keys = std::make_unique<char[]>(2 + pn + sn);
      e.keys[0] = static_cast<char>(static_cast<unsigned char>(pn));
      e.keys[1] = static_cast<char>(static_cast<unsigned char>(sn));
      std::memcpy(e.keys.get() + 2, p.data(), pn);
      std::memcpy(e.keys.get() + 2 + pn, s.data(), sn);
    }
    if (e.generation == 0 || !d.status_reason.empty() || !d.primary_thumbprint.empty() ||
        !d.secondary_thumbprint.empty()) {
      e.more = std::make_unique<extras>();
      if (e.generation == 0)
        e.more->generation_id = d.generation_id;
      e.more->status_reason = d.status_reason;
      e.more->primary_thumbprint = d.primary_thumbprint;
      e.more->secondary_thumbprint = d.secondary_thumbprint;
    }
    return e;
  }

  static device_identity unpack(const device_map::value_type& node) {
    const entry& e = node.second;
    device_identity d;
    d.device_id = node.first;
    d.version = e.version;
    d.generation_id = e.generation ? std::to_string(e.generation) : e.more->generation_id;
    d.status = e.status;
    d.status_updated = time_point{duration{e.status_updated_ms}};
    d.auth = e.auth;
    d.iot_edge = e.iot_edge;
    if (e.keys) {
      const auto pn = static_cast<unsigned char>(e.keys[0]);
      const auto sn = static_cast<unsigned char>(e.keys[1]);
      d.primary_key = auth::shared_access_key::from_bytes(std::string(e.keys.get() + 2, pn));
      d.secondary_key = auth::shared_access_key::from_bytes(std::string(e.keys.get() + 2 + pn, sn));
    }
    if (e.more) {
      d.status_reason = e.more->status_reason;
      d.primary_thumbprint = e.more->primary_thumbprint;
      d.secondary_thumbprint = e.more->secondary_thumbprint;
    }
    return d;
  }

  result<void> check_precondition(std::string_view id, device_map::const_iterator it,
                                  const std::optional<std::string>& if_match) const {
    if (!if_match) {
      if (it != devices_.end())
        return make_error(errc::device_already_exists,
                          "device '" + std::string(id) +
                              "' already exists (update it with If-Match: \"*\" or its etag)");
      return {};
    }
    if (it == devices_.end())
      return make_error(errc::precondition_failed,
                        "device '" + std::string(id) + "' does not exist, but If-Match was given");
    if (*if_match != "*" && *if_match != std::to_string(it->second.version))
      return make_error(errc::precondition_failed, "device '" + std::string(id) + "' has etag \"" +
                                                       std::to_string(it->second.version) +
                                                       "\", not \"" + *if_match + "\"");
    return {};
  }

  static bool is_thumbprint(std::string_view t) {
    if (t.size() != 40 && t.size() != 64)
      return false;
    for (char c : t)
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
        return false;
    return true;
  }

  static result<void> check_policy(const auth::shared_access_policy& p) {
    if (p.name.empty() || p.name.size() > 64)
      return make_error(errc::argument_invalid, "policy name: 1 to 64 characters");
    for (char c : p.name)
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            c == '-' || c == '_' || c == '.'))
        return make_error(errc::argument_invalid,
                          "policy name '" + p.name + "': only letters, digits, - _ and .");
    // the secondary key may be empty (an auth file's policy line has one key)
    for (const auto& [k, field] :
         {std::pair{&p.primary_key, "primaryKey"}, std::pair{&p.secondary_key, "secondaryKey"}})
      if ((k == &p.primary_key || !k->empty()) &&
          (k->bytes().size() < min_key_bytes || k->bytes().size() > max_key_bytes))
        return make_error(errc::argument_invalid, "policy '" + p.name + "' " + field +
                                                      ": a key is 16 to 64 bytes, not " +
                                                      std::to_string(k->bytes().size()));
    if (static_cast<std::uint8_t>(p.rights) & ~static_cast<std::uint8_t>(auth::access_rights::all))
      return make_error(errc::argument_invalid, "policy '" + p.name + "' rights: unknown bits");
    return {};
  }

  result<void> bad_restore(const char* what, const error& e) {
    devices_.clear();
    policies_.clear();
    return make_error(errc::malformed, std::string("stored ") + what + ": " + e.message);
  }

  static error not_found(std::string_view id) {
    return make_error(errc::device_not_found, "device '" + std::string(id) + "' is not registered");
  }

  device_map devices_;
  std::map<std::string, auth::shared_access_policy, std::less<>> policies_;
  journal::change_set pending_;
};

}  // namespace devicebound
