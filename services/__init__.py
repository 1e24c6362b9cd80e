"""edgefleet data-plane services: one package each, `config.py` + `service.py` (shared/service.py
says the shape). `edgefleet run NAME` finds them through edgefleet/registry.py."""
