"""The web console: the fleet's library, flows, nodes and deployments, and live data of a site."""
