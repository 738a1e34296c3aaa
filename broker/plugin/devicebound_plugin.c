/*
 * devicebound mosquitto plugin (plugin API v5, mosquitto 2.0).
 *
 * Tells the devicebound hub daemon what plain MQTT does not: that a device
 * subscribed to its device-bound topic, that the broker handed a device-bound
 * message to the device's connection, and that the device left. Enforces the
 * topic ACL of docs/stock-devices.md and, with the `auth_file` option,
 * authenticates devices with IoT Hub SAS tokens (SPEC 5.1-5.5).
 *
 * Events, all QoS 1, retain 0, published by the broker itself:
 *   devicebound/broker/subscribed/{id}    payload: the filter
 *   devicebound/broker/delivered/{id}     payload: the full device-bound topic
 *   devicebound/broker/disconnected/{id}  payload: empty
 *
 * Options (plugin_opt_<name> in mosquitto.conf):
 *   auth_file   device and policy keys; without it, any client may connect
 *               (test mode) and only the ACL applies.
 *   state_file  where to keep the ids of devices whose persistent session holds
 *               the device-bound subscription, so that a device reconnecting
 *               after a broker restart is announced again (pair it with
 *               mosquitto's `persistence true`).
 *
 * mosquitto runs all plugin callbacks on its one main thread, so the plugin
 * state needs no locking.
 */

#define _POSIX_C_SOURCE 200809L /* strdup, strtok_r, strncasecmp */

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#ifdef DEVICEBOUND_HAVE_MOSQUITTO_H
#include <mosquitto.h>
#else
/* libmosquitto-dev is not installed: the values of mosquitto.h, which are ABI. */
enum {
	MOSQ_ERR_SUCCESS = 0,
	MOSQ_ERR_NOMEM = 1,
	MOSQ_ERR_INVAL = 3,
	MOSQ_ERR_NOT_SUPPORTED = 10,
	MOSQ_ERR_AUTH = 11,
	MOSQ_ERR_ACL_DENIED = 12,
	MOSQ_ERR_UNKNOWN = 13
};
#define MOSQ_LOG_INFO 0x01
#define MOSQ_LOG_NOTICE 0x02
#define MOSQ_LOG_WARNING 0x04
#define MOSQ_LOG_ERR 0x08
#define MOSQ_LOG_DEBUG 0x10
#endif

#ifdef DEVICEBOUND_WITH_OPENSSL
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#endif

#if defined(__GNUC__)
#define DB_EXPORT __attribute__((visibility("default")))
#else
#define DB_EXPORT
#endif

#define DB_LOG_PREFIX "devicebound: "
#define DB_EVENT_PREFIX "devicebound/broker/"
#define DB_MAX_KEY_BYTES 128

/* ------------------------------------------------------------------------ */
/* A small string-keyed hash map (chained, FNV-1a).                          */

struct map_entry {
	struct map_entry *next;
	char *key;
	void *value;
};

struct map {
	struct map_entry **buckets;
	size_t bucket_count; /* a power of two, or 0 before first use */
	size_t count;
};

static uint64_t hash_string(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for(; *s; ++s){
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static struct map_entry **map_slot(struct map *m, const char *key)
{
	struct map_entry **slot;
	if(m->bucket_count == 0){
		return NULL;
	}
	slot = &m->buckets[hash_string(key) & (m->bucket_count - 1)];
	while(*slot && strcmp((*slot)->key, key) != 0){
		slot = &(*slot)->next;
	}
	return slot;
}

static void *map_get(struct map *m, const char *key)
{
	struct map_entry **slot = map_slot(m, key);
	return (slot && *slot) ? (*slot)->value : NULL;
}

static bool map_grow(struct map *m)
{
	size_t new_count = m->bucket_count ? m->bucket_count * 2 : 64;
	struct map_entry **nb = calloc(new_count, sizeof *nb);
	size_t i;
	if(!nb){
		return false;
	}
	for(i = 0; i < m->bucket_count; ++i){
		struct map_entry *e = m->buckets[i];
		while(e){
			struct map_entry *next = e->next;
			size_t b = hash_string(e->key) & (new_count - 1);
			e->next = nb[b];
			nb[b] = e;
			e = next;
		}
	}
	free(m->buckets);
	m->buckets = nb;
	m->bucket_count = new_count;
	return true;
}

/* Inserts a new key (the caller checked it is absent). */
static bool map_insert(struct map *m, const char *key, void *value)
{
	struct map_entry *e;
	size_t b;
	if(m->count >= m->bucket_count && !map_grow(m)){
		return false;
	}
	e = malloc(sizeof *e);
	if(!e){
		return false;
	}
	e->key = strdup(key);
	if(!e->key){
		free(e);
		return false;
	}
	e->value = value;
	b = hash_string(key) & (m->bucket_count - 1);
	e->next = m->buckets[b];
	m->buckets[b] = e;
	m->count++;
	return true;
}

static void *map_remove(struct map *m, const char *key)
{
	struct map_entry **slot = map_slot(m, key);
	struct map_entry *e;
	void *value;
	if(!slot || !*slot){
		return NULL;
	}
	e = *slot;
	*slot = e->next;
	value = e->value;
	free(e->key);
	free(e);
	m->count--;
	return value;
}

static void map_clear(struct map *m)
{
	size_t i;
	for(i = 0; i < m->bucket_count; ++i){
		struct map_entry *e = m->buckets[i];
		while(e){
			struct map_entry *next = e->next;
			free(e->key);
			free(e->value);
			free(e);
			e = next;
		}
	}
	free(m->buckets);
	m->buckets = NULL;
	m->bucket_count = 0;
	m->count = 0;
}

/* ------------------------------------------------------------------------ */
/* Plugin state.                                                             */

/* What the plugin knows about one client id. */
struct client_rec {
	struct mosquitto *conn; /* the current authenticated connection, NULL when offline */
	bool subscribed;        /* its broker session holds devices/{id}/messages/devicebound/# */
	bool persistent;        /* that session outlives the connection (CleanSession 0) */
};

/* A key from the auth file, decoded. */
struct key_rec {
	unsigned char bytes[DB_MAX_KEY_BYTES];
	size_t len;
	char text[2 * DB_MAX_KEY_BYTES]; /* as written in the file (base64) */
};

struct plugin_state {
	mosquitto_plugin_id_t *id;
	char *auth_file;   /* NULL: test mode, no authentication */
	char *state_file;  /* NULL: no restart memory */
	struct map clients;  /* client id -> struct client_rec */
	struct map devices;  /* device id -> struct key_rec */
	struct map policies; /* policy name -> struct key_rec */
	bool state_dirty;
	time_t state_written_at;
};

static struct plugin_state g_state;

/* ------------------------------------------------------------------------ */
/* Topic helpers.                                                            */

static const char k_devices_prefix[] = "devices/";
static const char k_devicebound_suffix[] = "/messages/devicebound/";

enum owner { OWNER_NONE, OWNER_SELF, OWNER_OTHER };

/* Who a topic or filter under devices/ belongs to, seen from client `id`:
 * OWNER_NONE when the first level is not "devices", OWNER_SELF when the second
 * level is exactly `id`, OWNER_OTHER otherwise (another id or a wildcard). */
static enum owner topic_owner(const char *topic, const char *id, const char **after_id)
{
	const char *seg;
	const char *end;
	size_t id_len = strlen(id);
	if(strncmp(topic, k_devices_prefix, sizeof k_devices_prefix - 1) != 0){
		if(strcmp(topic, "devices") == 0){
			return OWNER_OTHER;
		}
		return OWNER_NONE;
	}
	seg = topic + sizeof k_devices_prefix - 1;
	end = strchr(seg, '/');
	if(!end){
		end = seg + strlen(seg);
	}
	if((size_t)(end - seg) == id_len && memcmp(seg, id, id_len) == 0){
		if(after_id){
			*after_id = end;
		}
		return OWNER_SELF;
	}
	return OWNER_OTHER;
}

/* True if `rest` (what follows devices/{id}) is a device-bound topic:
 * "/messages/devicebound/..." (the hub always writes the slash). */
static bool is_devicebound_rest(const char *rest)
{
	return strncmp(rest, k_devicebound_suffix, sizeof k_devicebound_suffix - 1) == 0;
}

/* True if `rest` is "/messages/devicebound" or below it, with or without the slash. */
static bool is_devicebound_area(const char *rest)
{
	static const char area[] = "/messages/devicebound";
	size_t n = sizeof area - 1;
	return strncmp(rest, area, n) == 0 && (rest[n] == '\0' || rest[n] == '/');
}

/* devices/{any id}/messages/devicebound[/...] */
static bool is_devicebound_topic_of_anyone(const char *topic)
{
	const char *rest;
	if(strncmp(topic, k_devices_prefix, sizeof k_devices_prefix - 1) != 0){
		return false;
	}
	rest = strchr(topic + sizeof k_devices_prefix - 1, '/');
	return rest && is_devicebound_area(rest);
}

/* Drops an MQTT 5 "$share/{group}/" prefix from a subscription filter. */
static const char *strip_share(const char *filter)
{
	static const char share[] = "$share/";
	const char *slash;
	if(strncmp(filter, share, sizeof share - 1) != 0){
		return filter;
	}
	slash = strchr(filter + sizeof share - 1, '/');
	return slash ? slash + 1 : filter;
}

/* Where a topic or filter lies, and whose it is. */
enum area {
	AREA_OTHER,    /* anything else, and filters with a wildcard where the area is named */
	AREA_DEVICES,  /* devices/{X}/...: IoT Hub's device topics */
	AREA_PUSH,     /* devicebound/{device|service|admin}/{X}/...: what the hub pushes to client X */
	AREA_REQUEST,  /* devicebound/hub/{party}/{X}/...: requests from client X to the hub */
	AREA_STATUS,   /* devicebound/status/...: the hub's retained online/offline */
	AREA_BROKER    /* devicebound/broker/...: this plugin's events */
};

struct place {
	enum area area;
	enum owner owner;     /* for AREA_DEVICES, AREA_PUSH, AREA_REQUEST */
	bool device_party;    /* AREA_PUSH / AREA_REQUEST: the party level is "device" */
	const char *rest;     /* AREA_DEVICES, owner OWNER_SELF: what follows devices/{id} */
};

/* Compares one topic level [s, s+n) with a NUL-terminated string. */
static bool level_is(const char *s, size_t n, const char *word)
{
	return strlen(word) == n && memcmp(s, word, n) == 0;
}

/* The next level of `*p`: sets [*start, *start+*len) and moves *p past its '/'.
 * Returns false when there is no level left. */
static bool next_level(const char **p, const char **start, size_t *len)
{
	const char *end;
	if(*p == NULL){
		return false;
	}
	end = strchr(*p, '/');
	*start = *p;
	if(end){
		*len = (size_t)(end - *p);
		*p = end + 1;
	}else{
		*len = strlen(*p);
		*p = NULL;
	}
	return true;
}

static enum owner owner_of_level(const char *s, size_t n, const char *id)
{
	return level_is(s, n, id) ? OWNER_SELF : OWNER_OTHER;
}

static struct place classify(const char *topic, const char *id)
{
	struct place pl = {AREA_OTHER, OWNER_NONE, false, NULL};
	const char *p = topic;
	const char *lv;
	size_t n;
	if(!next_level(&p, &lv, &n)){
		return pl;
	}
	if(level_is(lv, n, "devices")){
		pl.area = AREA_DEVICES;
		pl.owner = topic_owner(topic, id, &pl.rest);
		return pl;
	}
	if(!level_is(lv, n, "devicebound") || !next_level(&p, &lv, &n)){
		return pl;
	}
	if(level_is(lv, n, "broker")){
		pl.area = AREA_BROKER;
	}else if(level_is(lv, n, "status")){
		pl.area = AREA_STATUS;
	}else if(level_is(lv, n, "device") || level_is(lv, n, "service") || level_is(lv, n, "admin")){
		pl.area = AREA_PUSH;
		pl.device_party = level_is(lv, n, "device");
		pl.owner = next_level(&p, &lv, &n) ? owner_of_level(lv, n, id) : OWNER_OTHER;
	}else if(level_is(lv, n, "hub")){
		pl.area = AREA_REQUEST;
		if(next_level(&p, &lv, &n)){
			pl.device_party = level_is(lv, n, "device");
			pl.owner = next_level(&p, &lv, &n) ? owner_of_level(lv, n, id) : OWNER_OTHER;
		}else{
			pl.owner = OWNER_OTHER;
		}
	}
	return pl;
}

/* MQTT topic filter matching (no special case for '$' topics: the caller
 * only asks about devicebound/... topics). */
static bool filter_matches(const char *filter, const char *topic)
{
	for(;;){
		if(filter[0] == '#' && filter[1] == '\0'){
			return true;
		}
		if(filter[0] == '+' && (filter[1] == '/' || filter[1] == '\0')){
			while(*topic && *topic != '/'){
				++topic;
			}
			++filter;
		}else{
			while(*filter && *filter != '/' && *filter == *topic){
				++filter;
				++topic;
			}
			if((*filter && *filter != '/') || (*topic && *topic != '/')){
				return false;
			}
		}
		/* both at '/' or '\0' */
		if(*filter == '\0' && *topic == '\0'){
			return true;
		}
		if(*filter == '\0'){
			return false;
		}
		if(*topic == '\0'){
			/* "a/#" also matches "a" */
			return strcmp(filter, "/#") == 0;
		}
		++filter;
		++topic;
	}
}

static bool has_wildcard_or_slash(const char *s)
{
	return strpbrk(s, "+#/") != NULL;
}

/* ------------------------------------------------------------------------ */
/* Events.                                                                   */

static void emit(const char *kind, const char *id, const char *payload)
{
	size_t len = sizeof DB_EVENT_PREFIX - 1 + strlen(kind) + 1 + strlen(id) + 1;
	char *topic = malloc(len);
	int rc;
	if(!topic){
		mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "out of memory, %s event for %s lost", kind, id);
		return;
	}
	snprintf(topic, len, DB_EVENT_PREFIX "%s/%s", kind, id);
	rc = mosquitto_broker_publish_copy(NULL, topic, (int)strlen(payload), payload, 1, false, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "could not publish %s (error %d)", topic, rc);
	}
	free(topic);
}

static char *devicebound_filter(const char *id)
{
	size_t len = sizeof k_devices_prefix - 1 + strlen(id) + sizeof k_devicebound_suffix - 1 + 2;
	char *f = malloc(len);
	if(f){
		snprintf(f, len, "%s%s%s#", k_devices_prefix, id, k_devicebound_suffix);
	}
	return f;
}

static void emit_subscribed(const char *id)
{
	char *f = devicebound_filter(id);
	if(f){
		emit("subscribed", id, f);
		free(f);
	}
}

static struct client_rec *client_get_or_add(const char *id)
{
	struct client_rec *rec = map_get(&g_state.clients, id);
	if(rec){
		return rec;
	}
	rec = calloc(1, sizeof *rec);
	if(!rec){
		return NULL;
	}
	if(!map_insert(&g_state.clients, id, rec)){
		free(rec);
		return NULL;
	}
	return rec;
}

static void set_subscribed(struct client_rec *rec, bool subscribed)
{
	if(rec->subscribed != subscribed){
		rec->subscribed = subscribed;
		if(rec->persistent){
			g_state.state_dirty = true;
		}
	}
}

/* A back end subscribed to `filter`: announce every online device whose
 * session holds the device-bound subscription and whose event topic the
 * filter matches, so that a hub that (re)starts learns who is there. */
static void announce_online(const char *filter)
{
	size_t i;
	for(i = 0; i < g_state.clients.bucket_count; ++i){
		const struct map_entry *e;
		for(e = g_state.clients.buckets[i]; e; e = e->next){
			const struct client_rec *rec = e->value;
			if(rec->conn && rec->subscribed){
				size_t len = sizeof DB_EVENT_PREFIX - 1 + sizeof "subscribed/" + strlen(e->key);
				char *topic = malloc(len);
				if(!topic){
					continue;
				}
				snprintf(topic, len, DB_EVENT_PREFIX "subscribed/%s", e->key);
				if(filter_matches(filter, topic)){
					emit_subscribed(e->key);
				}
				free(topic);
			}
		}
	}
}

/* ------------------------------------------------------------------------ */
/* State file: ids of devices whose persistent session holds the subscription. */

static void state_write(void)
{
	char *tmp;
	FILE *f;
	size_t i;
	bool ok = true;
	if(!g_state.state_file){
		g_state.state_dirty = false;
		return;
	}
	tmp = malloc(strlen(g_state.state_file) + 5);
	if(!tmp){
		return;
	}
	sprintf(tmp, "%s.tmp", g_state.state_file);
	f = fopen(tmp, "w");
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cannot write %s: %s", tmp, strerror(errno));
		free(tmp);
		return;
	}
	for(i = 0; i < g_state.clients.bucket_count && ok; ++i){
		const struct map_entry *e;
		for(e = g_state.clients.buckets[i]; e && ok; e = e->next){
			const struct client_rec *rec = e->value;
			if(rec->subscribed && rec->persistent && !strpbrk(e->key, "\r\n")){
				ok = fprintf(f, "%s\n", e->key) >= 0;
			}
		}
	}
	if(fclose(f) != 0){
		ok = false;
	}
	if(ok && rename(tmp, g_state.state_file) == 0){
		g_state.state_dirty = false;
		g_state.state_written_at = time(NULL);
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cannot write %s", g_state.state_file);
		remove(tmp);
	}
	free(tmp);
}

static void state_read(void)
{
	FILE *f;
	char line[1024];
	if(!g_state.state_file){
		return;
	}
	f = fopen(g_state.state_file, "r");
	if(!f){
		return; /* first start */
	}
	while(fgets(line, sizeof line, f)){
		size_t n = strcspn(line, "\r\n");
		struct client_rec *rec;
		line[n] = '\0';
		if(n == 0){
			continue;
		}
		rec = client_get_or_add(line);
		if(rec){
			rec->subscribed = true;
			rec->persistent = true;
		}
	}
	fclose(f);
}

/* ------------------------------------------------------------------------ */
/* Authentication.                                                           */

/* Parses a device username, "{host}/{deviceId}/?api-version=...". */
static bool parse_device_username(const char *username, const char **host, size_t *host_len,
		const char **device, size_t *device_len)
{
	const char *q;
	const char *slash;
	if(!username){
		return false;
	}
	q = strstr(username, "/?");
	slash = strchr(username, '/');
	if(!q || !slash || slash == username || slash >= q){
		return false;
	}
	*host = username;
	*host_len = (size_t)(slash - username);
	*device = slash + 1;
	*device_len = (size_t)(q - (slash + 1));
	return *device_len > 0;
}

/* A client is a device when its username is a device username for its own id. */
static bool is_device_client(const char *username, const char *id)
{
	const char *host;
	const char *dev;
	size_t host_len;
	size_t dev_len;
	return parse_device_username(username, &host, &host_len, &dev, &dev_len)
		&& dev_len == strlen(id) && memcmp(dev, id, dev_len) == 0;
}

#ifdef DEVICEBOUND_WITH_OPENSSL

static int hex_value(char c)
{
	if(c >= '0' && c <= '9') return c - '0';
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	if(c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

/* Percent-decodes s[0..n) into out (at least n bytes). Returns the length,
 * or (size_t)-1 on a bad escape. */
static size_t pct_decode(const char *s, size_t n, char *out)
{
	size_t i;
	size_t o = 0;
	for(i = 0; i < n; ++i){
		if(s[i] == '%'){
			int hi;
			int lo;
			if(i + 2 >= n){
				return (size_t)-1;
			}
			hi = hex_value(s[i + 1]);
			lo = hex_value(s[i + 2]);
			if(hi < 0 || lo < 0){
				return (size_t)-1;
			}
			out[o++] = (char)(hi * 16 + lo);
			i += 2;
		}else{
			out[o++] = s[i];
		}
	}
	return o;
}

/* Base64-decodes s[0..n) into out. Returns the length, or (size_t)-1. */
static size_t b64_decode(const char *s, size_t n, unsigned char *out, size_t out_size)
{
	int len;
	size_t pad = 0;
	if(n == 0 || n % 4 != 0 || n / 4 * 3 > out_size || n > 4096){
		return (size_t)-1;
	}
	if(s[n - 1] == '='){
		pad++;
		if(s[n - 2] == '='){
			pad++;
		}
	}
	len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
	if(len < 0 || (size_t)len < pad){
		return (size_t)-1;
	}
	return (size_t)len - pad;
}

struct sas_token {
	const char *sr, *sig, *se, *skn;
	size_t sr_len, sig_len, se_len, skn_len;
};

/* "SharedAccessSignature sr=...&sig=...&se=...[&skn=...]", any field order (SPEC 5.1). */
static bool sas_parse(const char *password, struct sas_token *t)
{
	static const char prefix[] = "SharedAccessSignature ";
	const char *p;
	memset(t, 0, sizeof *t);
	if(!password || strncmp(password, prefix, sizeof prefix - 1) != 0){
		return false;
	}
	p = password + sizeof prefix - 1;
	while(*p){
		const char *end = strchr(p, '&');
		const char *eq;
		const char **field = NULL;
		size_t *field_len = NULL;
		size_t key_len;
		if(!end){
			end = p + strlen(p);
		}
		eq = memchr(p, '=', (size_t)(end - p));
		if(!eq){
			return false;
		}
		key_len = (size_t)(eq - p);
		if(key_len == 2 && memcmp(p, "sr", 2) == 0){
			field = &t->sr; field_len = &t->sr_len;
		}else if(key_len == 3 && memcmp(p, "sig", 3) == 0){
			field = &t->sig; field_len = &t->sig_len;
		}else if(key_len == 2 && memcmp(p, "se", 2) == 0){
			field = &t->se; field_len = &t->se_len;
		}else if(key_len == 3 && memcmp(p, "skn", 3) == 0){
			field = &t->skn; field_len = &t->skn_len;
		}
		if(field){
			if(*field){
				return false; /* a field twice */
			}
			*field = eq + 1;
			*field_len = (size_t)(end - (eq + 1));
		}
		p = *end ? end + 1 : end;
	}
	return t->sr && t->sig && t->se;
}

/* se is decimal seconds since the epoch and must be in the future. */
static bool sas_not_expired(const struct sas_token *t, time_t now)
{
	unsigned long long se = 0;
	size_t i;
	if(t->se_len == 0 || t->se_len > 19){
		return false;
	}
	for(i = 0; i < t->se_len; ++i){
		if(!isdigit((unsigned char)t->se[i])){
			return false;
		}
		se = se * 10 + (unsigned long long)(t->se[i] - '0');
	}
	return se > (unsigned long long)now;
}

/* sig == base64(HMAC-SHA256(key, sr + "\n" + se)), sr as written in the token (SPEC 5.2). */
static bool sas_signature_ok(const struct sas_token *t, const struct key_rec *key)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	unsigned char sig[96];
	char sig_text[160];
	size_t sig_text_len;
	size_t sig_len;
	size_t msg_len = t->sr_len + 1 + t->se_len;
	char *msg;
	bool ok;
	if(t->sig_len >= sizeof sig_text){
		return false;
	}
	sig_text_len = pct_decode(t->sig, t->sig_len, sig_text);
	if(sig_text_len == (size_t)-1){
		return false;
	}
	sig_len = b64_decode(sig_text, sig_text_len, sig, sizeof sig);
	if(sig_len == (size_t)-1){
		return false;
	}
	msg = malloc(msg_len);
	if(!msg){
		return false;
	}
	memcpy(msg, t->sr, t->sr_len);
	msg[t->sr_len] = '\n';
	memcpy(msg + t->sr_len + 1, t->se, t->se_len);
	ok = HMAC(EVP_sha256(), key->bytes, (int)key->len, (const unsigned char *)msg, msg_len, mac, &mac_len) != NULL
		&& sig_len == mac_len && CRYPTO_memcmp(sig, mac, mac_len) == 0;
	free(msg);
	return ok;
}

/* A device: token for {host}/devices/{id}, signed with the device key, no skn. */
static bool auth_device(const char *id, const char *host, size_t host_len, const char *password)
{
	struct sas_token t;
	const struct key_rec *key = map_get(&g_state.devices, id);
	char *sr;
	size_t sr_len;
	size_t expect_len;
	bool ok;
	if(!key){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "device %s is not in the auth file", id);
		return false;
	}
	if(!sas_parse(password, &t) || t.skn){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "device %s: password is not a device SAS token", id);
		return false;
	}
	if(!sas_not_expired(&t, time(NULL))){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "device %s: SAS token expired or bad se", id);
		return false;
	}
	sr = malloc(t.sr_len + 1);
	if(!sr){
		return false;
	}
	sr_len = pct_decode(t.sr, t.sr_len, sr);
	/* {host}/devices/{id}; compared case-insensitively, as some SDKs lowercase it (SPEC 5.3). */
	expect_len = host_len + strlen("/devices/") + strlen(id);
	ok = sr_len == expect_len
		&& strncasecmp(sr, host, host_len) == 0
		&& strncasecmp(sr + host_len, "/devices/", strlen("/devices/")) == 0
		&& strncasecmp(sr + host_len + strlen("/devices/"), id, strlen(id)) == 0;
	free(sr);
	if(!ok){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "device %s: SAS token is for another resource", id);
		return false;
	}
	if(!sas_signature_ok(&t, key)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "device %s: bad SAS signature", id);
		return false;
	}
	return true;
}

/* A back end: a SAS token whose skn names a policy and is signed with its key,
 * or username = policy name and password = the policy key as written. */
static bool auth_backend(const char *id, const char *username, const char *password)
{
	struct sas_token t;
	if(!password){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "client %s: no credentials", id);
		return false;
	}
	if(sas_parse(password, &t)){
		char name[256];
		const struct key_rec *key;
		if(!t.skn || t.skn_len >= sizeof name){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "client %s: SAS token without a policy (skn)", id);
			return false;
		}
		memcpy(name, t.skn, t.skn_len);
		name[t.skn_len] = '\0';
		key = map_get(&g_state.policies, name);
		if(!key || !sas_not_expired(&t, time(NULL)) || !sas_signature_ok(&t, key)){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "client %s: bad, expired or unknown policy token", id);
			return false;
		}
		return true;
	}
	if(username){
		const struct key_rec *key = map_get(&g_state.policies, username);
		size_t n = strlen(password);
		if(key && n == strlen(key->text) && CRYPTO_memcmp(password, key->text, n) == 0){
			return true;
		}
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "client %s: bad back-end credentials", id);
	return false;
}

/* Reads "{deviceId} {base64 key}" and "policy {name} {base64 key}" lines. */
static bool auth_file_load(const char *path, struct map *devices, struct map *policies)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	int line_no = 0;
	bool ok = true;
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cannot open auth_file %s: %s", path, strerror(errno));
		return false;
	}
	while(ok && fgets(line, sizeof line, f)){
		char *fields[4];
		int n = 0;
		char *save = NULL;
		char *tok;
		struct key_rec *key;
		struct map *target;
		const char *name;
		const char *text;
		line_no++;
		if(strchr(line, '#') == line){
			continue;
		}
		for(tok = strtok_r(line, " \t\r\n", &save); tok && n < 4; tok = strtok_r(NULL, " \t\r\n", &save)){
			fields[n++] = tok;
		}
		if(n == 0){
			continue;
		}
		if(n == 2){
			target = devices;
			name = fields[0];
			text = fields[1];
		}else if(n == 3 && strcmp(fields[0], "policy") == 0){
			target = policies;
			name = fields[1];
			text = fields[2];
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "%s:%d: expected '{deviceId} {key}' or 'policy {name} {key}'", path, line_no);
			ok = false;
			break;
		}
		key = calloc(1, sizeof *key);
		if(!key){
			ok = false;
			break;
		}
		key->len = b64_decode(text, strlen(text), key->bytes, sizeof key->bytes);
		if(key->len == (size_t)-1 || key->len == 0 || strlen(text) >= sizeof key->text){
			mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "%s:%d: the key is not base64 (at most %d bytes)", path, line_no, DB_MAX_KEY_BYTES);
			free(key);
			ok = false;
			break;
		}
		strcpy(key->text, text);
		if(map_get(target, name)){
			mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "%s:%d: %s is listed twice", path, line_no, name);
			free(key);
			ok = false;
			break;
		}
		if(!map_insert(target, name, key)){
			free(key);
			ok = false;
			break;
		}
	}
	fclose(f);
	return ok;
}

#endif /* DEVICEBOUND_WITH_OPENSSL */

/* (Re)loads the auth file; on failure keeps the keys it had. */
static bool auth_reload(void)
{
#ifdef DEVICEBOUND_WITH_OPENSSL
	struct map devices = {0};
	struct map policies = {0};
	if(!auth_file_load(g_state.auth_file, &devices, &policies)){
		map_clear(&devices);
		map_clear(&policies);
		return false;
	}
	map_clear(&g_state.devices);
	map_clear(&g_state.policies);
	g_state.devices = devices;
	g_state.policies = policies;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "auth_file %s: %lu device(s), %lu policy(ies)",
			g_state.auth_file, (unsigned long)devices.count, (unsigned long)policies.count);
	return true;
#else
	mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "auth_file needs a plugin built with OpenSSL (libssl-dev)");
	return false;
#endif
}

/* ------------------------------------------------------------------------ */
/* Callbacks.                                                                */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	const char *host;
	const char *dev;
	size_t host_len;
	size_t dev_len;
	bool device_form;
	struct client_rec *rec;
	(void)event;
	(void)userdata;

	if(!id || !*id || has_wildcard_or_slash(id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "refused client id '%s': it may not contain + # /", id ? id : "");
		return MOSQ_ERR_AUTH;
	}
	device_form = parse_device_username(ed->username, &host, &host_len, &dev, &dev_len);
	if(device_form && !(dev_len == strlen(id) && memcmp(dev, id, dev_len) == 0)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "refused client %s: its username names another device", id);
		return MOSQ_ERR_AUTH;
	}
#ifdef DEVICEBOUND_WITH_OPENSSL
	if(g_state.auth_file){
		bool ok = device_form ? auth_device(id, host, host_len, ed->password)
		                      : auth_backend(id, ed->username, ed->password);
		if(!ok){
			return MOSQ_ERR_AUTH;
		}
	}
#endif

	rec = client_get_or_add(id);
	if(!rec){
		return MOSQ_ERR_NOMEM;
	}
	/* From here this connection is the client's current one. A connection it
	 * takes over is disconnected right after this callback and its disconnect
	 * event is not published (see on_disconnect): with a persistent session the
	 * device simply stays online. A clean session ends the old session and its
	 * subscription, so that is reported as a disconnect now. */
	if(rec->conn && rec->conn != ed->client && mosquitto_client_clean_session(ed->client)){
		emit("disconnected", id, "");
	}
	rec->conn = ed->client;
	if(mosquitto_client_clean_session(ed->client)){
		if(rec->persistent && rec->subscribed){
			g_state.state_dirty = true;
		}
		rec->subscribed = false;
		rec->persistent = false;
	}else{
		if(!rec->persistent && rec->subscribed){
			g_state.state_dirty = true;
		}
		rec->persistent = true;
		/* The session keeps the subscription and stock SDKs do not subscribe
		 * again on reconnect: announce the device as subscribed now. */
		if(rec->subscribed){
			emit_subscribed(id);
		}
	}
	return MOSQ_ERR_SUCCESS;
}

/* Read access (SUBSCRIBE and READ). Device topics and pushes are readable only
 * by the client they name; devices read nothing else but the hub's status. */
static bool may_read(const struct place *pl, bool device)
{
	switch(pl->area){
		case AREA_DEVICES:
			return pl->owner == OWNER_SELF;
		case AREA_PUSH:
			return pl->owner == OWNER_SELF && (!device || pl->device_party);
		case AREA_STATUS:
			return true;
		case AREA_REQUEST:
		case AREA_BROKER:
		case AREA_OTHER:
			return !device;
	}
	return false;
}

/* Write access (PUBLISH, and wills). Nobody writes the plugin's events or a
 * request in another client's name; devices write only their own telemetry
 * and their own requests. */
static bool may_write(const struct place *pl, bool device)
{
	switch(pl->area){
		case AREA_BROKER:
			return false;
		case AREA_REQUEST:
			return pl->owner == OWNER_SELF && (!device || pl->device_party);
		case AREA_DEVICES:
			if(device){
				return pl->owner == OWNER_SELF && !is_devicebound_area(pl->rest);
			}
			return true;
		case AREA_PUSH:
		case AREA_STATUS:
		case AREA_OTHER:
			return !device;
	}
	return false;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	const char *topic = ed->topic;
	struct place pl;
	bool device;
	(void)event;
	(void)userdata;

	if(!id || !topic){
		return MOSQ_ERR_ACL_DENIED;
	}
	device = is_device_client(mosquitto_client_username(ed->client), id);

	switch(ed->access){
		case MOSQ_ACL_SUBSCRIBE: {
			const char *filter = strip_share(topic);
			pl = classify(filter, id);
			if(!may_read(&pl, device)){
				return MOSQ_ERR_ACL_DENIED;
			}
			if(pl.area == AREA_DEVICES && pl.owner == OWNER_SELF
					&& strcmp(pl.rest, "/messages/devicebound/#") == 0){
				struct client_rec *rec = client_get_or_add(id);
				if(rec){
					set_subscribed(rec, true);
				}
				emit_subscribed(id);
			}
			if(!device && (pl.area == AREA_BROKER || pl.area == AREA_OTHER)){
				announce_online(filter);
			}
			return MOSQ_ERR_SUCCESS;
		}
		case MOSQ_ACL_UNSUBSCRIBE:
			pl = classify(strip_share(topic), id);
			if(pl.area == AREA_DEVICES && pl.owner == OWNER_SELF
					&& strcmp(pl.rest, "/messages/devicebound/#") == 0){
				struct client_rec *rec = map_get(&g_state.clients, id);
				if(rec){
					set_subscribed(rec, false);
				}
			}
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_READ:
			pl = classify(topic, id);
			if(!may_read(&pl, device)){
				return MOSQ_ERR_ACL_DENIED;
			}
			if(pl.area == AREA_DEVICES && pl.owner == OWNER_SELF && is_devicebound_rest(pl.rest)){
				const struct client_rec *rec = map_get(&g_state.clients, id);
				/* Only for the live connection. A message routed to an offline
				 * session is checked again when the device reconnects, just
				 * before mosquitto sends it (connection_check_acl). */
				if(rec && rec->conn == ed->client){
					emit("delivered", id, topic);
				}
			}
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_WRITE:
			pl = classify(topic, id);
			if(!may_write(&pl, device)){
				return MOSQ_ERR_ACL_DENIED;
			}
			if(ed->retain && is_devicebound_topic_of_anyone(topic)){
				return MOSQ_ERR_ACL_DENIED; /* device-bound messages are never retained */
			}
			return MOSQ_ERR_SUCCESS;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	struct client_rec *rec;
	(void)event;
	(void)userdata;

	if(!id){
		return MOSQ_ERR_SUCCESS; /* never authenticated */
	}
	rec = map_get(&g_state.clients, id);
	if(!rec || rec->conn != ed->client){
		/* Not authenticated, or taken over by a newer connection with the same
		 * id, which is the one that counts. */
		return MOSQ_ERR_SUCCESS;
	}
	rec->conn = NULL;
	emit("disconnected", id, "");
	if(!rec->persistent){
		free(map_remove(&g_state.clients, id));
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	if(g_state.state_dirty && time(NULL) != g_state.state_written_at){
		state_write();
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	if(g_state.auth_file){
		auth_reload();
	}
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Plugin entry points.                                                      */

DB_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; ++i){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

static void state_free(void)
{
	map_clear(&g_state.clients);
	map_clear(&g_state.devices);
	map_clear(&g_state.policies);
	free(g_state.auth_file);
	free(g_state.state_file);
	memset(&g_state, 0, sizeof g_state);
}

struct registration {
	int event;
	MOSQ_FUNC_generic_callback cb;
};

static const struct registration k_registrations[] = {
	{MOSQ_EVT_BASIC_AUTH, on_basic_auth},
	{MOSQ_EVT_ACL_CHECK, on_acl_check},
	{MOSQ_EVT_DISCONNECT, on_disconnect},
	{MOSQ_EVT_TICK, on_tick},
	{MOSQ_EVT_RELOAD, on_reload},
};

DB_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i;
	size_t r;
	memset(&g_state, 0, sizeof g_state);
	g_state.id = identifier;
	for(i = 0; i < option_count; ++i){
		char **target = NULL;
		if(strcmp(options[i].key, "auth_file") == 0){
			target = &g_state.auth_file;
		}else if(strcmp(options[i].key, "state_file") == 0){
			target = &g_state.state_file;
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "unknown option plugin_opt_%s", options[i].key);
			state_free();
			return MOSQ_ERR_INVAL;
		}
		free(*target);
		*target = strdup(options[i].value);
		if(!*target){
			state_free();
			return MOSQ_ERR_NOMEM;
		}
	}
	if(g_state.auth_file && !auth_reload()){
		state_free();
		return MOSQ_ERR_INVAL;
	}
	if(!g_state.auth_file){
		mosquitto_log_printf(MOSQ_LOG_WARNING, DB_LOG_PREFIX "no plugin_opt_auth_file: test mode, clients are not authenticated");
	}
	state_read();

	for(r = 0; r < sizeof k_registrations / sizeof k_registrations[0]; ++r){
		int rc = mosquitto_callback_register(identifier, k_registrations[r].event, k_registrations[r].cb, NULL, &g_state);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cannot register callback for event %d (error %d)",
					k_registrations[r].event, rc);
			while(r-- > 0){
				mosquitto_callback_unregister(identifier, k_registrations[r].event, k_registrations[r].cb, NULL);
			}
			state_free();
			return rc;
		}
	}
	*userdata = &g_state;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "plugin ready (%s)",
			g_state.auth_file ? "SAS authentication" : "test mode");
	return MOSQ_ERR_SUCCESS;
}

DB_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	size_t r;
	(void)userdata;
	(void)options;
	(void)option_count;
	for(r = 0; r < sizeof k_registrations / sizeof k_registrations[0]; ++r){
		mosquitto_callback_unregister(g_state.id, k_registrations[r].event, k_registrations[r].cb, NULL);
	}
	if(g_state.state_dirty){
		state_write();
	}
	state_free();
	return MOSQ_ERR_SUCCESS;
}
