"""How people reach the search: one sub-package per program.

- `services.server`: the FastAPI app (routers, deps, schemas, errors, middleware, dashboard page);
- `services.core`: what the server serves (search queue, SQL stores, read models, measurements,
  predictions, the scheduler, API keys, the database and its migrations); no HTTP here;
- `services.cli`: the `nas` command line; `services.farm`: the device farm agent;
  `services.client`: the Python client of the REST API (HTTP only).

`services.settings` (the `NAS_*` environment, read once) and `services.option_values` are shared by
all of them. The import rules between these packages are import-linter contracts (`make lint`).
"""
