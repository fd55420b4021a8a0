/* fuzz_config — the config loader on arbitrary bytes: no crash, no leak,
 * and a NULL result always comes with at least one positioned error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load_buffer("fuzz.yaml", (const char *)data, size, false,
                                                  &errs);

    if (!cfg && errs.n == 0)
        abort();
    if (cfg && errs.n != 0)
        abort();
    for (size_t i = 0; i < errs.n; i++)
        if (strncmp(errs.lines[i], "fuzz.yaml:", 10) != 0)
            abort();
    if (cfg) {
        for (size_t i = 0; i < cfg->n_listeners; i++)
            for (size_t r = 0; r < cfg->listeners[i].n_routes; r++)
                if (wg_config_service(cfg, cfg->listeners[i].routes[r].service)->name == NULL)
                    abort();            /* every referenced service exists */
        for (size_t i = 1; i < cfg->n_services; i++)
            if (strcmp(cfg->services[i - 1].name, cfg->services[i].name) >= 0)
                abort();                /* sorted, unique */
    }
    wg_config_free(cfg);
    wg_errors_free(&errs);
    return 0;
}
