// The plugin's topic access rules (docs/stock-devices.md, "Access control"):
// where a topic or subscription filter lies and whose it is, and who may read
// or write it with which rights. Pure functions over text, no mosquitto.
#pragma once

#include <cstring>
#include <devicebound/auth/rights.hpp>
#include <optional>
#include <string_view>

namespace devicebound::broker {

using auth::access_rights;

inline constexpr std::string_view devices_prefix = "devices/";
inline constexpr std::string_view devicebound_suffix = "/messages/devicebound/";

/// Whose a topic under `devices/` is, seen from one client id.
enum class owner { none, self, other };

/// Who a topic or filter under `devices/` belongs to, seen from client `id`:
/// `none` when the first level is not "devices", `self` when the second level
/// is exactly `id` (then `*after_id` is what follows it), `other` otherwise
/// (another id or a wildcard).
inline owner topic_owner(std::string_view topic, std::string_view id, std::string_view* after_id) {
  if (!topic.starts_with(devices_prefix))
    return topic == "devices" ? owner::other : owner::none;
  const std::string_view rest = topic.substr(devices_prefix.size());
  const std::size_t end = rest.find('/');
  if (rest.substr(0, end) != id)
    return owner::other;
  if (after_id != nullptr)
    *after_id = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  return owner::self;
}

/// `rest` (what follows devices/{id}) is a device-bound topic:
/// "/messages/devicebound/..." (the hub always writes the slash).
inline bool is_devicebound_rest(std::string_view rest) {
  return rest.starts_with(devicebound_suffix);
}

/// `rest` is "/messages/devicebound" or below it, with or without the slash.
inline bool is_devicebound_area(std::string_view rest) {
  constexpr std::string_view area = "/messages/devicebound";
  return rest.starts_with(area) && (rest.size() == area.size() || rest[area.size()] == '/');
}

/// devices/{any id}/messages/devicebound[/...]
inline bool is_devicebound_topic_of_anyone(std::string_view topic) {
  if (!topic.starts_with(devices_prefix))
    return false;
  const std::size_t slash = topic.find('/', devices_prefix.size());
  return slash != std::string_view::npos && is_devicebound_area(topic.substr(slash));
}

/// Drops an MQTT 5 "$share/{group}/" prefix from a subscription filter.
inline std::string_view strip_share(std::string_view filter) {
  constexpr std::string_view share = "$share/";
  if (!filter.starts_with(share))
    return filter;
  const std::size_t slash = filter.find('/', share.size());
  return slash == std::string_view::npos ? filter : filter.substr(slash + 1);
}

/// Where a topic or filter lies.
enum class area {
  other,    ///< anything else, and filters with a wildcard where the area is named
  devices,  ///< devices/{X}/...: IoT Hub's device topics
  push,     ///< devicebound/{device|service|admin}/{X}/...: what the hub pushes to client X
  request,  ///< devicebound/hub/{party}/{X}/...: requests from client X to the hub
  status,   ///< devicebound/status/...: the hub's retained online/offline
  broker,   ///< devicebound/broker/...: this plugin's events
};

/// The party level of an extension topic: devicebound/{party}/... (push) or
/// devicebound/hub/{party}/... (request).
enum class party {
  none,  ///< not an extension topic, or a request whose party is none of these
  device,
  service,
  admin,
};

/// Where a topic or filter lies, and whose it is.
struct place {
  enum area area = area::other;
  enum owner owner = owner::none;  ///< for devices, push, request
  enum party party = party::none;  ///< push / request: the party level
  bool devicebound = false;        ///< devices: devices/{anyone}/messages/devicebound[/...]
  std::string_view rest;           ///< devices, owner self: what follows devices/{id}
};

namespace detail {

/// Splits topic levels one at a time; empty once the last level was taken.
struct levels {
  std::optional<std::string_view> left;

  std::optional<std::string_view> next() {
    if (!left)
      return std::nullopt;
    const std::string_view s = *left;
    const std::size_t slash = s.find('/');
    if (slash == std::string_view::npos) {
      left.reset();
      return s;
    }
    left = s.substr(slash + 1);
    return s.substr(0, slash);
  }
};

inline enum owner owner_of(std::optional<std::string_view> level, std::string_view id) {
  return level && *level == id ? owner::self : owner::other;
}

inline enum party party_of(std::optional<std::string_view> level) {
  if (level == "device")
    return party::device;
  if (level == "service")
    return party::service;
  if (level == "admin")
    return party::admin;
  return party::none;
}

}  // namespace detail

inline place classify(std::string_view topic, std::string_view id) {
  place pl;
  detail::levels lv{topic};
  const auto first = lv.next();
  if (first == "devices") {
    pl.area = area::devices;
    pl.owner = topic_owner(topic, id, &pl.rest);
    pl.devicebound = is_devicebound_topic_of_anyone(topic);
    return pl;
  }
  if (first != "devicebound")
    return pl;
  const auto second = lv.next();
  if (!second)
    return pl;
  if (*second == "broker") {
    pl.area = area::broker;
  } else if (*second == "status") {
    pl.area = area::status;
  } else if (*second == "device" || *second == "service" || *second == "admin") {
    pl.area = area::push;
    pl.party = detail::party_of(second);
    pl.owner = detail::owner_of(lv.next(), id);
  } else if (*second == "hub") {
    pl.area = area::request;
    if (const auto party = lv.next()) {
      pl.party = detail::party_of(party);
      pl.owner = detail::owner_of(lv.next(), id);
    } else {
      pl.owner = owner::other;
    }
  }
  return pl;
}

/// MQTT topic filter matching (no special case for '$' topics: the caller
/// only asks about devicebound/... topics). Both strings NUL-terminated.
inline bool filter_matches(const char* filter, const char* topic) {
  for (;;) {
    if (filter[0] == '#' && filter[1] == '\0')
      return true;
    if (filter[0] == '+' && (filter[1] == '/' || filter[1] == '\0')) {
      while (*topic && *topic != '/')
        ++topic;
      ++filter;
    } else {
      while (*filter && *filter != '/' && *filter == *topic) {
        ++filter;
        ++topic;
      }
      if ((*filter && *filter != '/') || (*topic && *topic != '/'))
        return false;
    }
    // both at '/' or '\0'
    if (*filter == '\0' && *topic == '\0')
      return true;
    if (*filter == '\0')
      return false;
    if (*topic == '\0')
      return std::strcmp(filter, "/#") == 0;  // "a/#" also matches "a"
    ++filter;
    ++topic;
  }
}

inline bool has_wildcard_or_slash(std::string_view s) {
  return s.find_first_of("+#/") != std::string_view::npos;
}

/// The host and device of a device username, "{host}/{deviceId}/?api-version=...".
struct device_username {
  std::string_view host;
  std::string_view device;
};

inline std::optional<device_username> parse_device_username(const char* username) {
  if (username == nullptr)
    return std::nullopt;
  const std::string_view u = username;
  const std::size_t q = u.find("/?");
  const std::size_t slash = u.find('/');
  if (q == std::string_view::npos || slash == 0 || slash >= q)
    return std::nullopt;
  device_username out{u.substr(0, slash), u.substr(slash + 1, q - (slash + 1))};
  if (out.device.empty())
    return std::nullopt;
  return out;
}

/// A client is a device when its username is a device username for its own id.
inline bool is_device_client(const char* username, std::string_view id) {
  const auto d = parse_device_username(username);
  return d && d->device == id;
}

/// The right a back end needs for a party's extension topics (what it reads
/// as that party, and its requests as that party): the right the same
/// operations need on the hub's other doors (docs/security.md, "What each
/// front door enforces"). Service sends, purges and settles feedback:
/// ServiceConnect. Device receives and settles: DeviceConnect. Admin
/// registers and removes devices: RegistryWrite. `none`: no right.
inline access_rights right_of(party p) noexcept {
  switch (p) {
    case party::device:
      return access_rights::device_connect;
    case party::service:
      return access_rights::service_connect;
    case party::admin:
      return access_rights::registry_write;
    case party::none:
      break;
  }
  return access_rights::none;
}

/// Read access (SUBSCRIBE and READ, i.e. each message the broker hands over)
/// for a client with `rights` (a device connection: `device`). Device topics
/// and pushes are readable only by the client they name; devices read nothing
/// else but the hub's status. A back end reads `devices/{id}/...` (it acts as
/// device `id`) only with DeviceConnect, its pushes only with its party's
/// right, and the requests and the plugin's events (what the hub reads) only
/// with ServiceConnect. A device's own rights are not looked at: its
/// connection was let in for that device alone (DeviceConnect for it).
inline bool may_read(const place& pl, bool device, access_rights rights) {
  switch (pl.area) {
    case area::devices:
      return pl.owner == owner::self &&
             (device || auth::includes(rights, access_rights::device_connect));
    case area::push:
      if (pl.owner != owner::self)
        return false;
      return device ? pl.party == party::device : auth::includes(rights, right_of(pl.party));
    case area::status:
      return true;
    case area::request:
    case area::broker:
      return !device && auth::includes(rights, access_rights::service_connect);
    case area::other:
      return !device;
  }
  return false;
}

/// Write access (PUBLISH, and wills). Nobody writes the plugin's events or a
/// request in another client's name; devices write only their own telemetry
/// and their own requests. A back end's request needs its party's right; what
/// the hub writes (messages on `devices/{X}/messages/devicebound/...`, its
/// pushes, its status) needs ServiceConnect (the hub delivering, as a send
/// does); any other `devices/{id}/...` topic (telemetry, as device `id`)
/// DeviceConnect and the client's own id.
inline bool may_write(const place& pl, bool device, access_rights rights) {
  switch (pl.area) {
    case area::broker:
      return false;
    case area::request:
      if (pl.owner != owner::self)
        return false;
      return device ? pl.party == party::device : auth::includes(rights, right_of(pl.party));
    case area::devices:
      if (device)
        return pl.owner == owner::self && !is_devicebound_area(pl.rest);
      if (pl.devicebound)
        return auth::includes(rights, access_rights::service_connect);
      return pl.owner == owner::self && auth::includes(rights, access_rights::device_connect);
    case area::push:
    case area::status:
      return !device && auth::includes(rights, access_rights::service_connect);
    case area::other:
      return !device;
  }
  return false;
}

/// What a client asks for: to read (SUBSCRIBE a filter, or receive a message)
/// or to write (PUBLISH, or its will).
enum class access { read, write };

/// The whole decision for client `id` (a device connection: `device`) holding
/// `rights` (what its token's policy grants; a device's key grants
/// DeviceConnect) on `topic` (for a read, a topic or a subscription filter,
/// with any `$share/{group}/` prefix).
inline bool allowed(access what, std::string_view topic, std::string_view id, bool device,
                    access_rights rights) {
  if (what == access::read)
    return may_read(classify(strip_share(topic), id), device, rights);
  return may_write(classify(topic, id), device, rights);
}

}  // namespace devicebound::broker
