"""A whole site from one file: `site.yaml` (model.py) → instance configs (derive.py) →
processes kept running (supervisor.py). `edgefleet up`, `check` and `schema` use it."""
