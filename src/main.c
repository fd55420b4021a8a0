/* main — command line; wires the control thread. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "waygate/config.h"
#include "waygate/control.h"
#include "waygate/register.h"
#include "waygate/tls.h"

#define DEFAULT_CONFIG "conf/waygate.yaml"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: waygate [-c FILE]        run in the foreground (default %s)\n"
            "       waygate -t [-c FILE]     check the configuration and exit\n"
            "       waygate -V               print the version\n"
            "       waygate register ...     provider side (waygate register --help)\n",
            DEFAULT_CONFIG);
}

static int check_config(const char *path)
{
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load(path, &errs);
    /* Certificates and keys: readable, and each key matching its certificate. */
    struct wg_tls_set *tls = cfg ? wg_tls_set_new(cfg, &errs) : NULL;
    for (size_t k = 0; k < errs.n; k++)
        fprintf(stderr, "%s\n", errs.lines[k]);
    wg_errors_free(&errs);
    wg_tls_set_free(tls);
    wg_config_free(cfg);
    if (!tls)
        return 1;
    printf("%s: configuration ok\n", path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "register") == 0)
        return wg_register_main(argc - 1, argv + 1);
    const char *path = DEFAULT_CONFIG;
    int test_only = 0, opt;
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 'V':
            printf("waygate %s\n", WAYGATE_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (test_only)
        return check_config(path);
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load(path, &errs);
    for (size_t k = 0; k < errs.n; k++)
        fprintf(stderr, "%s\n", errs.lines[k]);
    wg_errors_free(&errs);
    if (!cfg)
        return 1;
    return wg_control_run(cfg);
}
