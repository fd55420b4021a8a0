/* registry_cache — see registry_cache.h */
#include "registry_cache.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "waygate/log.h"
#include "waygate/pool.h"

#define DEBOUNCE_S 1

struct wg_registry_cache {
    char *path;
    char *tmp;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct wg_snapshot *pending;
    bool stop;
};

/* A JSON string literal (a valid YAML double-quoted scalar). */
static void put_string(FILE *f, const char *s)
{
    json_t *j = json_string(s);
    char *text = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;

    fputs(text ? text : "\"\"", f);
    free(text);
    json_decref(j);
}

/* metadata keeps its scalar values (the file format's rule). */
static void put_metadata(FILE *f, const char *json)
{
    json_t *o = json ? json_loads(json, 0, NULL) : NULL, *v;
    const char *k;
    bool first = true;

    if (json_is_object(o)) {
        json_object_foreach(o, k, v) {
            if (json_is_object(v) || json_is_array(v))
                continue;
            fputs(first ? ", \"metadata\": {" : ", ", f);
            put_string(f, k);
            fputs(": ", f);
            if (json_is_string(v))
                put_string(f, json_string_value(v));
            else if (json_is_null(v))
                fputs("null", f);
            else {
                char *t = json_dumps(v, JSON_ENCODE_ANY);
                put_string(f, t ? t : "");
                free(t);
            }
            first = false;
        }
        if (!first)
            fputc('}', f);
    }
    json_decref(o);
}

static void put_member(FILE *f, const struct wg_member *m)
{
    struct sockaddr_storage st;
    const struct sockaddr_storage *ss = &st;
    wg_instance_sockaddr(m->inst, &st);
    char ip[INET6_ADDRSTRLEN] = "";
    unsigned port = 0;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    fputs("  - {\"id\": ", f);
    put_string(f, m->inst->id);
    fprintf(f, ", \"address\": \"%s\", \"port\": %u, \"weight\": %u", ip, port, m->weight);
    /* The address picked for HTTP/2 stays HTTP/2 when read back (a Kratos
     * value's other endpoint is not kept: etcd resends it once connected). */
    if (m->inst->protocol != WG_UPSTREAM_HTTP1)
        fputs(", \"protocol\": \"grpc\"", f);
    put_metadata(f, m->metadata);
    fputs("}\n", f);
}

static void put_snapshot(FILE *f, const struct wg_snapshot *s)
{
    fputs("# waygate registry cache (file registry format); rewritten as etcd changes\n", f);
    for (size_t k = 0; k < s->n_services; k++) {
        const struct wg_pool_service *svc = s->services[k];
        if (!svc->n_members)
            continue;
        put_string(f, svc->name);
        fputs(":\n", f);
        for (uint32_t i = 0; i < svc->n_members; i++)
            put_member(f, &svc->members[i]);
    }
}

static void fsync_dir(const char *path)
{
    char *copy = strdup(path);
    int fd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;

    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

static void write_file(struct wg_registry_cache *c, const struct wg_snapshot *s)
{
    FILE *f = fopen(c->tmp, "we");
    bool ok;

    if (!f) {
        wg_warn("msg=\"cannot write the registry cache\" file=%s error=\"%s\"", c->tmp,
                strerror(errno));
        return;
    }
    put_snapshot(f, s);
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(c->tmp, c->path) < 0) {
        wg_warn("msg=\"cannot write the registry cache\" file=%s error=\"%s\"", c->path,
                strerror(errno));
        unlink(c->tmp);
        return;
    }
    fsync_dir(c->path);
    wg_debug("msg=\"registry cache written\" file=%s generation=%llu", c->path,
             (unsigned long long)s->generation);
}

static void *writer(void *arg)
{
    struct wg_registry_cache *c = arg;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->pending && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (!c->pending)
            break;
        struct wg_snapshot *s = c->pending;
        c->pending = NULL;
        pthread_mutex_unlock(&c->mu);
        write_file(c, s);
        wg_snapshot_unref(s);
        pthread_mutex_lock(&c->mu);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += DEBOUNCE_S;
        while (!c->stop && pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static bool start_thread(struct wg_registry_cache *c)
{
    pthread_condattr_t ca;
    sigset_t all, old;
    bool ok;

    if (pthread_condattr_init(&ca) || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) ||
        pthread_cond_init(&c->cv, &ca))
        return false;
    pthread_condattr_destroy(&ca);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);    /* signals stay with the control thread */
    ok = pthread_create(&c->thread, NULL, writer, c) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!ok)
        pthread_cond_destroy(&c->cv);
    return ok;
}

struct wg_registry_cache *wg_registry_cache_new(const char *path)
{
    struct wg_registry_cache *c = calloc(1, sizeof *c);

    if (!c || !(c->path = strdup(path)) || !(c->tmp = malloc(strlen(path) + 8)))
        goto fail;
    sprintf(c->tmp, "%s.tmp", path);
    pthread_mutex_init(&c->mu, NULL);
    if (!start_thread(c)) {
        pthread_mutex_destroy(&c->mu);
        goto fail;
    }
    return c;
fail:
    wg_error("msg=\"cannot start the registry cache writer\" file=%s", path);
    if (c) {
        free(c->path);
        free(c->tmp);
    }
    free(c);
    return NULL;
}

void wg_registry_cache_publish(struct wg_registry_cache *c, struct wg_snapshot *s)
{
    struct wg_snapshot *old;

    if (!s)
        return;
    wg_snapshot_ref(s);
    pthread_mutex_lock(&c->mu);
    old = c->pending;
    c->pending = s;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    wg_snapshot_unref(old);
}

bool wg_registry_cache_load(struct wg_registry_cache *c, struct wg_record_set *out)
{
    struct wg_errors warnings = { 0 };
    unsigned invalid = 0;
    bool ok;

    if (access(c->path, R_OK) < 0)
        return false;
    ok = wg_record_parse_file(c->path, out, &warnings, &invalid);
    for (size_t k = 0; k < warnings.n; k++)
        wg_warn("msg=\"registry cache entry skipped\" where=\"%s\"", warnings.lines[k]);
    wg_errors_free(&warnings);
    if (!ok)
        wg_warn("msg=\"registry cache unreadable\" file=%s", c->path);
    else
        wg_record_set_sort(out);
    return ok;
}

void wg_registry_cache_free(struct wg_registry_cache *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c->path);
    free(c->tmp);
    free(c);
}

void wg_registry_cache_serve(struct wg_registry_cache *c, struct wg_pool *pool,
                             const char *source)
{
    struct wg_record_set set = { 0 };

    if (!c || !wg_registry_cache_load(c, &set))
        return;
    if (wg_pool_replace_all(pool, &set) < 0)
        wg_error("msg=\"cannot publish the registry cache\"");
    else
        wg_warn("msg=\"%s unreachable: serving the registry cache until it answers\" "
                "instances=%zu", source, set.n);
    wg_record_set_clear(&set);
}
