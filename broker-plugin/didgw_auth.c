/*
 * didgw_auth: a mosquitto 2.0 plugin (API version 5) that lets devices and people in with
 * a session token the gateway sealed, instead of a dynamic-security account per session.
 *
 * Why: the dynamic-security plugin rewrites its whole JSON file on every account change
 * while the broker routes nothing (44-87 ms per change, issue 19). A token needs no change
 * in the broker at all: the gateway seals it, this plugin checks it with the token key it
 * shares with the gateway and takes the client's topics from its claims.
 *
 * The token (gateway/auth/broker_tokens.py makes it; docs/protocol/mqtt.md describes it):
 *   v2.<b64url(payload)>.<b64url(HMAC-SHA256(key, "v2." + b64url(payload)))>
 * A MAC, not a signature: every login is checked on the broker's one thread while it
 * routes nothing, and an Ed25519 verification took 74 us of it (a burst of 300 logins held
 * routing 13-20 ms), an HMAC about 1 us.
 * payload, canonical JSON with one fixed layout (read by a strict parser, no JSON library):
 *   {"exp":N,"iat":N,"jti":"S","kind":"device"|"person","pfx":"S","sub":"S"}
 *
 * Only clients whose username starts with "did:" are ours; every check on them fails
 * closed (a bad token, an unreadable deny file, an unknown connection: refused). Everyone
 * else (the gateway's and the admin's accounts, anonymous clients) is deferred to the
 * dynamic-security plugin, which must be loaded after this one.
 *
 * Options:
 *   plugin_opt_key_file         the token key: exactly 32 bytes, readable by no one but
 *                               its owner and group (0640 at most); reloaded when it
 *                               changes. Until it can be read, every DID is refused (the
 *                               broker may start before the gateway).
 *   plugin_opt_deny_file        lines "<did> <unix s>": that DID's tokens issued at or
 *                               before that second are void (revoked, suspended or
 *                               re-keyed then; a newer token passes). The gateway
 *                               replaces it atomically (write + rename). It must exist (it
 *                               may be empty); reloaded when it changes, and the voided
 *                               sessions are kicked.
 *
 * Sessions are remembered per connection (the client pointer), not per username: when a
 * device reconnects, its new connection authenticates before the old one is dropped, and
 * dropping the old one must not forget the new one's claims.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sodium.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_TOKEN 2048           /* longest password read (gateway/auth/broker_tokens.py) */
#define MAX_DENY_FILE (32 << 20) /* 32 MiB: far more than 10,000 lines */
#define MAX_DENY_LINE 4200
#define TAG_BYTES crypto_auth_hmacsha256_BYTES /* 32 */

enum kind { KIND_DEVICE, KIND_PERSON };

struct session {
	const struct mosquitto *client; /* the key: one entry per connection */
	char *username;
	int64_t exp, iat;
	char *publish[2];   /* topics it may publish to (NULL: none) */
	char *subscribe[3]; /* topic filters it may subscribe to, and receive on */
	struct session *next;
};

struct denied {
	char *did;
	int64_t stamp; /* tokens issued at or before this second are void */
	struct denied *next;
};

static mosquitto_plugin_id_t *plugin_id;
static unsigned char token_key[crypto_auth_hmacsha256_KEYBYTES]; /* 32 bytes, shared */
static bool key_ok;  /* token_key holds a key read from key_path */
static char *key_path;
static struct stat key_stat;
static bool key_seen;
static char *deny_path;

static struct session **sessions;
static size_t session_buckets, session_count;
static int64_t next_expiry = INT64_MAX;

static struct denied **deny_table;
static size_t deny_buckets;
static bool deny_all; /* the deny file could not be read: refuse every DID */
static struct stat deny_stat;
static bool deny_seen;
static bool sweep_pending; /* the deny list changed during an authentication */

static void refresh_key(void);

/* -- small helpers --------------------------------------------------------------------- */

static bool is_ours(const char *username)
{
	return username != NULL && strncmp(username, "did:", 4) == 0;
}

static uint64_t hash_string(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for(; *s; s++){
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static size_t pointer_bucket(const void *p, size_t buckets)
{
	uint64_t h = (uint64_t)(uintptr_t)p;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (size_t)(h & (buckets - 1));
}

static char *join(const char *a, const char *b, const char *c, const char *d)
{
	size_t n = strlen(a) + strlen(b) + strlen(c) + strlen(d) + 1;
	char *out = mosquitto_malloc(n);
	if(out) snprintf(out, n, "%s%s%s%s", a, b, c, d);
	return out;
}

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

/* -- base64url (strict: no padding, canonical trailing bits) -------------------------- */

static int b64_value(char c)
{
	if(c >= 'A' && c <= 'Z') return c - 'A';
	if(c >= 'a' && c <= 'z') return c - 'a' + 26;
	if(c >= '0' && c <= '9') return c - '0' + 52;
	if(c == '-') return 62;
	if(c == '_') return 63;
	return -1;
}

/* Decodes len chars of in into out (room for len*3/4 bytes); returns the length or -1. */
static long b64url_decode(const char *in, size_t len, unsigned char *out)
{
	uint32_t acc = 0;
	int bits = 0;
	long n = 0;
	if(len % 4 == 1) return -1;
	for(size_t i = 0; i < len; i++){
		int v = b64_value(in[i]);
		if(v < 0) return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if(bits >= 8){
			bits -= 8;
			out[n++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	if(acc != 0) return -1; /* non-zero leftover bits: not the one spelling */
	return n;
}

/* -- the payload: one fixed layout ----------------------------------------------------- */

struct claims {
	int64_t exp, iat;
	enum kind kind;
	char sub[MAX_TOKEN];
	char pfx[MAX_TOKEN];
};

static bool expect(const char **p, const char *end, const char *literal)
{
	size_t n = strlen(literal);
	if((size_t)(end - *p) < n || memcmp(*p, literal, n) != 0) return false;
	*p += n;
	return true;
}

static bool read_int(const char **p, const char *end, int64_t *out)
{
	const char *start = *p;
	int64_t v = 0;
	while(*p < end && **p >= '0' && **p <= '9'){
		if(*p - start >= 15) return false;
		v = v * 10 + (**p - '0');
		(*p)++;
	}
	if(*p == start) return false;
	if(start[0] == '0' && *p - start > 1) return false; /* no leading zeros */
	*out = v;
	return true;
}

/* A string value up to the closing quote: printable ASCII, no backslash. */
static bool read_str(const char **p, const char *end, char *out, size_t room)
{
	size_t n = 0;
	while(*p < end && **p != '"'){
		unsigned char c = (unsigned char)**p;
		if(c < 0x20 || c > 0x7e || c == '\\' || n + 1 >= room) return false;
		out[n++] = (char)c;
		(*p)++;
	}
	if(*p >= end) return false;
	out[n] = '\0';
	(*p)++; /* the quote */
	return true;
}

static bool parse_claims(const char *payload, size_t len, struct claims *c)
{
	const char *p = payload, *end = payload + len;
	char kind[16], jti[64];
	if(!expect(&p, end, "{\"exp\":") || !read_int(&p, end, &c->exp)) return false;
	if(!expect(&p, end, ",\"iat\":") || !read_int(&p, end, &c->iat)) return false;
	if(!expect(&p, end, ",\"jti\":\"") || !read_str(&p, end, jti, sizeof(jti))) return false;
	if(!expect(&p, end, ",\"kind\":\"") || !read_str(&p, end, kind, sizeof(kind))) return false;
	if(!expect(&p, end, ",\"pfx\":\"") || !read_str(&p, end, c->pfx, sizeof(c->pfx))) return false;
	if(!expect(&p, end, ",\"sub\":\"") || !read_str(&p, end, c->sub, sizeof(c->sub))) return false;
	if(!expect(&p, end, "}") || p != end) return false;
	if(strcmp(kind, "device") == 0) c->kind = KIND_DEVICE;
	else if(strcmp(kind, "person") == 0) c->kind = KIND_PERSON;
	else return false;
	return jti[0] != '\0' && c->exp > c->iat;
}

/* A topic prefix: non-empty levels, no wildcards, no leading '$' (gateway/auth/broker.py). */
static bool good_prefix(const char *pfx)
{
	if(pfx[0] == '\0' || pfx[0] == '$' || pfx[0] == '/') return false;
	for(const char *s = pfx; *s; s++){
		if(*s == '+' || *s == '#') return false;
		if(*s == '/' && (s[1] == '/' || s[1] == '\0')) return false;
	}
	return true;
}

/* One whole topic level. */
static bool good_level(const char *s)
{
	return s[0] != '\0' && strpbrk(s, "/+#") == NULL;
}

/* libsodium's HMAC-SHA256, compared in constant time. */
static bool tag_ok(const char *covered, size_t covered_len, const unsigned char *tag)
{
	return crypto_auth_hmacsha256_verify(tag, (const unsigned char *)covered, covered_len,
			token_key) == 0;
}

/* Checks a token for username; fills c. Returns NULL when valid, else why not. */
static const char *check_token(const char *username, const char *token, int64_t now,
		struct claims *c)
{
	size_t len;
	const char *dot;
	unsigned char payload[MAX_TOKEN], tag[MAX_TOKEN];
	long payload_len, tag_len;

	if(token == NULL) return "no token";
	len = strnlen(token, MAX_TOKEN + 1);
	if(len > MAX_TOKEN) return "token too long";
	if(strncmp(token, "v2.", 3) != 0) return "not a v2 token";
	dot = memchr(token + 3, '.', len - 3);
	if(dot == NULL) return "malformed token";
	payload_len = b64url_decode(token + 3, (size_t)(dot - token - 3), payload);
	tag_len = b64url_decode(dot + 1, len - (size_t)(dot + 1 - token), tag);
	if(payload_len <= 0 || tag_len != TAG_BYTES) return "malformed token";
	if(!tag_ok(token, (size_t)(dot - token), tag)) return "bad tag";
	if(!parse_claims((const char *)payload, (size_t)payload_len, c)) return "bad payload";
	if(strcmp(c->sub, username) != 0) return "token of another DID";
	if(!good_level(c->sub) || !good_prefix(c->pfx)) return "bad claims";
	if(now >= c->exp) return "token expired";
	return NULL;
}

/* -- the deny list --------------------------------------------------------------------- */

static void free_deny_table(struct denied **table, size_t buckets)
{
	if(table == NULL) return;
	for(size_t i = 0; i < buckets; i++){
		struct denied *d = table[i], *next;
		for(; d; d = next){
			next = d->next;
			mosquitto_free(d->did);
			mosquitto_free(d);
		}
	}
	mosquitto_free(table);
}

/* Whether a token of ``did`` issued at ``iat`` is void. */
static bool is_denied(const char *did, int64_t iat)
{
	if(deny_all) return true;
	if(deny_table == NULL) return false;
	for(struct denied *d = deny_table[hash_string(did) & (deny_buckets - 1)]; d; d = d->next){
		if(strcmp(d->did, did) == 0) return iat <= d->stamp;
	}
	return false;
}

/* Parses the deny file into a new table; false (and nothing changed) when it is not valid. */
static bool load_deny_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[MAX_DENY_LINE + 2];
	struct denied **table;
	size_t buckets = 1024, count = 0, total = 0;
	bool ok = true;

	if(f == NULL) return false;
	table = mosquitto_calloc(buckets, sizeof(*table));
	if(table == NULL){
		fclose(f);
		return false;
	}
	while(ok && fgets(line, sizeof(line), f)){
		char *space, *tail;
		size_t n = strlen(line);
		long long stamp;
		struct denied *d;
		total += n;
		if(total > MAX_DENY_FILE || n > MAX_DENY_LINE || line[n - 1] != '\n'){
			ok = false;
			break;
		}
		line[n - 1] = '\0';
		space = strchr(line, ' ');
		if(space == NULL || !is_ours(line)){
			ok = false;
			break;
		}
		*space = '\0';
		if(!good_level(line) || space[1] < '0' || space[1] > '9'){
			ok = false;
			break;
		}
		errno = 0;
		stamp = strtoll(space + 1, &tail, 10);
		if(errno != 0 || *tail != '\0' || stamp < 0){
			ok = false;
			break;
		}
		if(count >= buckets * 2){ /* grow: rehash into twice the buckets */
			size_t more = buckets * 4;
			struct denied **bigger = mosquitto_calloc(more, sizeof(*bigger));
			if(bigger == NULL){
				ok = false;
				break;
			}
			for(size_t i = 0; i < buckets; i++){
				struct denied *e = table[i], *next;
				for(; e; e = next){
					size_t b = hash_string(e->did) & (more - 1);
					next = e->next;
					e->next = bigger[b];
					bigger[b] = e;
				}
			}
			mosquitto_free(table);
			table = bigger;
			buckets = more;
		}
		d = mosquitto_calloc(1, sizeof(*d));
		if(d == NULL || (d->did = mosquitto_strdup(line)) == NULL){
			mosquitto_free(d);
			ok = false;
			break;
		}
		d->stamp = stamp;
		size_t b = hash_string(line) & (buckets - 1);
		d->next = table[b];
		table[b] = d;
		count++;
	}
	if(ferror(f)) ok = false;
	fclose(f);
	if(!ok){
		free_deny_table(table, buckets);
		return false;
	}
	free_deny_table(deny_table, deny_buckets);
	deny_table = table;
	deny_buckets = buckets;
	mosquitto_log_printf(MOSQ_LOG_INFO, "didgw_auth: deny list loaded, %zu DIDs", count);
	return true;
}

/* Reloads the deny file if it changed since last time; true if the list changed. */
static bool refresh_deny_list(void)
{
	struct stat st;
	bool changed;
	if(stat(deny_path, &st) != 0){
		if(!deny_all){
			mosquitto_log_printf(MOSQ_LOG_ERR,
					"didgw_auth: cannot read the deny file %s: refusing every DID", deny_path);
		}
		deny_all = true;
		deny_seen = false;
		return true;
	}
	changed = !deny_seen || st.st_ino != deny_stat.st_ino || st.st_dev != deny_stat.st_dev
		|| st.st_size != deny_stat.st_size || st.st_mtim.tv_sec != deny_stat.st_mtim.tv_sec
		|| st.st_mtim.tv_nsec != deny_stat.st_mtim.tv_nsec;
	if(!changed) return false;
	deny_stat = st;
	deny_seen = true;
	if(load_deny_file(deny_path)){
		deny_all = false;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"didgw_auth: the deny file %s is not valid: refusing every DID", deny_path);
		deny_all = true;
	}
	return true;
}

/* -- sessions -------------------------------------------------------------------------- */

static void free_session(struct session *s)
{
	mosquitto_free(s->username);
	for(int i = 0; i < 2; i++) mosquitto_free(s->publish[i]);
	for(int i = 0; i < 3; i++) mosquitto_free(s->subscribe[i]);
	mosquitto_free(s);
}

static struct session *find_session(const struct mosquitto *client)
{
	if(sessions == NULL) return NULL;
	for(struct session *s = sessions[pointer_bucket(client, session_buckets)]; s; s = s->next){
		if(s->client == client) return s;
	}
	return NULL;
}

static void forget_session(const struct mosquitto *client)
{
	struct session **link;
	if(sessions == NULL) return;
	link = &sessions[pointer_bucket(client, session_buckets)];
	for(; *link; link = &(*link)->next){
		if((*link)->client == client){
			struct session *gone = *link;
			*link = gone->next;
			free_session(gone);
			session_count--;
			return;
		}
	}
}

static bool grow_sessions(void)
{
	size_t more = session_buckets * 2;
	struct session **bigger = mosquitto_calloc(more, sizeof(*bigger));
	if(bigger == NULL) return false;
	for(size_t i = 0; i < session_buckets; i++){
		struct session *s = sessions[i], *next;
		for(; s; s = next){
			size_t b = pointer_bucket(s->client, more);
			next = s->next;
			s->next = bigger[b];
			bigger[b] = s;
		}
	}
	mosquitto_free(sessions);
	sessions = bigger;
	session_buckets = more;
	return true;
}

static bool remember_session(const struct mosquitto *client, const struct claims *c)
{
	struct session *s = mosquitto_calloc(1, sizeof(*s));
	bool ok;
	size_t b;
	if(s == NULL) return false;
	s->client = client;
	s->exp = c->exp;
	s->iat = c->iat;
	s->username = mosquitto_strdup(c->sub);
	if(c->kind == KIND_DEVICE){
		s->publish[0] = join(c->pfx, "/d/", c->sub, "/readings");
		s->publish[1] = join(c->pfx, "/d/", c->sub, "/orders");
		s->subscribe[0] = join(c->pfx, "/d/", c->sub, "/acks");
		s->subscribe[1] = join(c->pfx, "/d/", c->sub, "/market");
		ok = s->publish[0] && s->publish[1] && s->subscribe[0] && s->subscribe[1];
	}else{
		s->publish[0] = join(c->pfx, "/p/", c->sub, "/req");
		s->subscribe[0] = join(c->pfx, "/p/", c->sub, "/res");
		s->subscribe[1] = join(c->pfx, "/status-list", "", "");
		ok = s->publish[0] && s->subscribe[0] && s->subscribe[1];
	}
	if(!ok || s->username == NULL || (session_count >= session_buckets && !grow_sessions())){
		free_session(s);
		return false;
	}
	b = pointer_bucket(client, session_buckets);
	s->next = sessions[b];
	sessions[b] = s;
	session_count++;
	if(s->exp < next_expiry) next_expiry = s->exp;
	return true;
}

/* Disconnects every session that is expired or denied. The client ids are collected first
 * and kicked after the table has been walked: a kick fires the disconnect event, which
 * edits the table. A kick by client id is one hash lookup in the broker (a kick by
 * username walks every client), and it drops exactly that connection, not a newer one of
 * the same DID. The client pointer is valid while its session is in the table: the
 * broker fires the disconnect event before it frees a connection. */
static void sweep(int64_t now)
{
	char **kick = NULL;
	size_t kicks = 0, room = 0;
	int64_t soonest = INT64_MAX;

	for(size_t i = 0; i < session_buckets; i++){
		struct session **link = &sessions[i];
		while(*link){
			struct session *s = *link;
			if(is_denied(s->username, s->iat) || now >= s->exp){
				const char *id = mosquitto_client_id(s->client);
				if(kicks == room){
					size_t more = room ? room * 2 : 64;
					char **bigger = mosquitto_realloc(kick, more * sizeof(*kick));
					if(bigger == NULL) break; /* the ACLs deny it meanwhile; next tick */
					kick = bigger;
					room = more;
				}
				mosquitto_log_printf(MOSQ_LOG_NOTICE, "didgw_auth: disconnecting %s (%s)",
						s->username, now >= s->exp ? "token expired" : "denied");
				kick[kicks] = mosquitto_strdup(id ? id : "");
				if(kick[kicks] != NULL) kicks++;
				*link = s->next;
				free_session(s);
				session_count--;
				continue;
			}
			if(s->exp < soonest) soonest = s->exp;
			link = &s->next;
		}
	}
	next_expiry = soonest;
	for(size_t i = 0; i < kicks; i++){
		if(kick[i][0] != '\0') mosquitto_kick_client_by_clientid(kick[i], false);
		mosquitto_free(kick[i]);
	}
	mosquitto_free(kick);
}

/* -- events ---------------------------------------------------------------------------- */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct claims *c;
	const char *why;
	int64_t now = now_s();
	(void)event;
	(void)userdata;

	/* A connection reuses the memory of an earlier one: never let it inherit claims. */
	forget_session(ed->client);
	if(!is_ours(ed->username)) return MOSQ_ERR_PLUGIN_DEFER;

	if(refresh_deny_list()) sweep_pending = true; /* kicks wait for the tick */
	refresh_key();
	c = mosquitto_malloc(sizeof(*c));
	if(c == NULL) return MOSQ_ERR_AUTH;
	why = key_ok ? check_token(ed->username, ed->password, now, c) : "no token key yet";
	if(why == NULL && is_denied(ed->username, c->iat)) why = "denied";
	if(why == NULL && !remember_session(ed->client, c)) why = "out of memory";
	mosquitto_free(c);
	if(why != NULL){
		mosquitto_log_printf(MOSQ_LOG_INFO, "didgw_auth: refused %.200s: %s", ed->username, why);
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_SUCCESS;
}

static bool listed(char *const *topics, size_t n, const char *topic)
{
	for(size_t i = 0; i < n; i++){
		if(topics[i] != NULL && strcmp(topics[i], topic) == 0) return true;
	}
	return false;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	struct session *s;
	int64_t now;
	(void)event;
	(void)userdata;

	if(!is_ours(username)) return MOSQ_ERR_PLUGIN_DEFER;
	s = find_session(ed->client);
	if(s == NULL || strcmp(s->username, username) != 0) return MOSQ_ERR_ACL_DENIED;
	now = now_s();
	if(now >= s->exp || is_denied(username, s->iat)) return MOSQ_ERR_ACL_DENIED;
	switch(ed->access){
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS; /* leaving a topic gives nothing away */
		case MOSQ_ACL_WRITE:
			return listed(s->publish, 2, ed->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_READ:
		case MOSQ_ACL_SUBSCRIBE:
			return listed(s->subscribe, 3, ed->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_tick(int event, void *event_data, void *userdata)
{
	int64_t now = now_s();
	(void)event;
	(void)event_data;
	(void)userdata;
	refresh_key();
	if(refresh_deny_list() || sweep_pending || now >= next_expiry){
		sweep_pending = false;
		sweep(now);
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	(void)event;
	(void)userdata;
	forget_session(ed->client);
	return MOSQ_ERR_SUCCESS;
}

/* -- plugin entry points --------------------------------------------------------------- */

/* The token key: exactly 32 bytes, in a regular file that others cannot read (a key
 * anyone on the machine could read would let them make tokens). */
static bool read_key(const char *path)
{
	FILE *f = fopen(path, "rb");
	unsigned char raw[sizeof(token_key) + 1];
	struct stat st;
	size_t n;
	bool ok;
	if(f == NULL) return false;
	if(fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & S_IRWXO) != 0){
		fclose(f);
		return false;
	}
	n = fread(raw, 1, sizeof(raw), f);
	ok = n == sizeof(token_key) && feof(f) && !ferror(f);
	fclose(f);
	if(ok) memcpy(token_key, raw, sizeof(token_key));
	sodium_memzero(raw, sizeof(raw));
	return ok;
}

/* Reads the token key again when its file changed (the gateway writes it when it starts);
 * an unreadable or wrong file refuses every DID until it is fixed. */
static void refresh_key(void)
{
	struct stat st;
	if(stat(key_path, &st) != 0){
		if(key_ok || !key_seen){
			mosquitto_log_printf(MOSQ_LOG_ERR,
					"didgw_auth: cannot read the token key %s: refusing every DID", key_path);
		}
		key_ok = false;
		key_seen = true;
		memset(&key_stat, 0, sizeof(key_stat));
		return;
	}
	/* The change time too: a chmod that opens the file to others must be seen. */
	bool same = key_seen && st.st_ino == key_stat.st_ino && st.st_dev == key_stat.st_dev
		&& st.st_size == key_stat.st_size && st.st_mtim.tv_sec == key_stat.st_mtim.tv_sec
		&& st.st_mtim.tv_nsec == key_stat.st_mtim.tv_nsec
		&& st.st_ctim.tv_sec == key_stat.st_ctim.tv_sec
		&& st.st_ctim.tv_nsec == key_stat.st_ctim.tv_nsec;
	if(same) return; /* unchanged: still good, or the same bad file, said once */
	key_stat = st;
	key_seen = true;
	key_ok = read_key(key_path);
	if(key_ok){
		mosquitto_log_printf(MOSQ_LOG_INFO, "didgw_auth: token key read from %s", key_path);
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"didgw_auth: %s is not a token key (32 bytes, not readable by others): "
				"refusing every DID", key_path);
	}
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "key_file") == 0) key_path = mosquitto_strdup(options[i].value);
		else if(strcmp(options[i].key, "deny_file") == 0) deny_path = mosquitto_strdup(options[i].value);
	}
	if(key_path == NULL || deny_path == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"didgw_auth: plugin_opt_key_file and plugin_opt_deny_file are required");
		return MOSQ_ERR_INVAL;
	}
	if(sodium_init() < 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "didgw_auth: libsodium cannot start");
		return MOSQ_ERR_UNKNOWN;
	}
	refresh_key(); /* missing or bad: every DID is refused until it is fixed */
	session_buckets = 1024;
	sessions = mosquitto_calloc(session_buckets, sizeof(*sessions));
	if(sessions == NULL) return MOSQ_ERR_NOMEM;
	refresh_deny_list(); /* a missing or bad file refuses every DID until it is fixed */
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL)){
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	for(size_t i = 0; i < session_buckets; i++){
		struct session *s = sessions[i], *next;
		for(; s; s = next){
			next = s->next;
			free_session(s);
		}
	}
	mosquitto_free(sessions);
	sessions = NULL;
	session_buckets = session_count = 0;
	free_deny_table(deny_table, deny_buckets);
	deny_table = NULL;
	sodium_memzero(token_key, sizeof(token_key));
	mosquitto_free(deny_path);
	deny_path = NULL;
	mosquitto_free(key_path);
	key_path = NULL;
	key_ok = key_seen = false;
	return MOSQ_ERR_SUCCESS;
}
